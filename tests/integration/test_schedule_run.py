"""A fault schedule on the real stack: each step applied at its offset and lifted at
its end, while the wait for a killed service's health runs beside the schedule (it
delays no other step); everything healthy when the run returns."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: How late a step may be applied or lifted. Measured over 5 idle runs: at most
#: 0.13-0.20 s, the pause's own application (freezing the container takes about
#: 0.14 s; a kill or a partition 2-22 ms). Twice that, for a loaded machine.
LATE_S = 0.4


@pytest.mark.effect_optional  # the runner's clock is under test; nginx has no traffic
def test_steps_run_on_time_and_a_health_wait_delays_no_other_step(chaos, chaos_project):
    done = chaos.run_schedule(
        "kill redis at 0s for 0.5s; pause postgres at 0.2s for 0.6s; "
        "partition nginx at 0.5s for 0.5s"
    )
    late = max(
        max(r.applied_s - r.step.at, r.undone_s - r.step.end)
        for r in done.steps
        if r.applied_s is not None and r.undone_s is not None
    )
    chaos.record("schedule_latest_s", round(late, 3))
    for r in done.steps:
        assert r.applied_s is not None
        assert r.undone_s is not None
        assert 0 <= r.applied_s - r.step.at < LATE_S, r
        # Lifted on time although redis' health wait (about 1 s) began at 0.5 s.
        assert 0 <= r.undone_s - r.step.end < LATE_S, r
    for name in ("redis", "postgres", "nginx"):
        assert chaos_project.service(name).is_healthy(), name
    assert chaos.active == []
    # The kill's wait for health was over before the run returned.
    assert done.seconds >= 1.0


def test_a_step_on_a_service_still_coming_back_waits_for_it(chaos, chaos_project):
    done = chaos.run_schedule("kill redis at 0s for 0.5s; pause redis at 0.5s for 0.5s")
    kill, pause = done.steps
    assert kill.undone_s is not None
    assert pause.applied_s is not None
    # redis was killed: its restart and health come first, then the pause.
    assert pause.applied_s > kill.undone_s
    assert chaos_project.service("redis").is_healthy()
