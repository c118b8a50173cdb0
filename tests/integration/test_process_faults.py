"""Pause, stop and cascade against the real stack, and every process fault undone
through the journal after pytest itself is killed with SIGKILL."""

from __future__ import annotations

import pytest

from pytest_chaos import ConfigurationError, FaultError, cascade, pause, stop

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_pause_freezes_the_container_and_the_undo_thaws_it(chaos_project):
    redis = chaos_project.service("redis")
    with pause(redis) as handle:
        assert redis.state()["Paused"] is True
        frozen = redis.main_pid()
        assert _proc_state(frozen) == "D" or _freezer_state(redis) == "FROZEN"
    assert redis.state()["Paused"] is False
    assert redis.is_healthy()
    assert handle.undone_at is not None


def test_pausing_a_paused_service_is_refused(chaos_project):
    redis = chaos_project.service("redis")
    with pause(redis), pytest.raises(FaultError, match="already paused"), pause(redis):
        pass
    assert redis.is_healthy()


def test_stop_is_a_manual_stop_the_restart_policy_ignores(chaos_project):
    nginx = chaos_project.service("nginx")
    with stop(nginx, grace=2) as handle:
        assert nginx.state()["Running"] is False
        assert handle.exit_code is not None
    assert nginx.is_healthy()
    # The undo started it: the restart policy leaves a manual stop alone.
    assert handle.restored_by == "pytest-chaos"


def test_cascade_kills_in_order_with_gaps_and_waits_for_all(chaos_project):
    services = [chaos_project.service(n) for n in ("redis", "nginx")]
    with cascade(services, gaps="300ms") as handle:
        pass
    first, second = handle.kills
    assert (first.target, second.target) == ("redis", "nginx")
    assert second.applied_at - first.applied_at >= 0.3
    assert all(s.is_healthy() for s in services)
    figures = handle.figures()
    assert figures["nginx_killed_after_s"] >= 0.3
    assert figures["redis_healthy_after_s"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gaps": [1, 2]}, "2 services need 1 gaps"),
        ({"gaps": "-1s"}, "gap"),
        ({"signal": "SIGCONT"}, "SIGCONT is not a fault"),
    ],
)
def test_bad_cascades_apply_nothing(chaos_project, kwargs, message):
    services = [chaos_project.service(n) for n in ("redis", "nginx")]
    restarts = [s.restart_count() for s in services]
    with pytest.raises(ConfigurationError, match=message), cascade(services, **kwargs):
        pass
    assert [s.restart_count() for s in services] == restarts


FAULTS = {
    "pause": ('chaos.pause("redis")', lambda s: s.state()["Paused"]),
    "sigstop": ('chaos.kill("redis", "SIGSTOP")', lambda s: _proc_state(s.main_pid()) == "T"),
    "stop": ('chaos.stop("redis", grace=1)', lambda s: not s.state()["Running"]),
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_kill_9_of_pytest_leaves_the_fault_and_cleanup_undoes_it(
    chaos_project, kill_9_during, kind
):
    call, in_force = FAULTS[kind]
    redis = chaos_project.service("redis")
    killed = kill_9_during(call)
    assert in_force(redis), "the fault should outlive a SIGKILLed pytest"
    result = killed.cleanup()
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"pytest-chaos: undid {kind.replace('sigstop', 'kill')} redis*"])
    assert redis.is_healthy()
    assert not in_force(redis)
    killed.assert_as_before()


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def _freezer_state(service) -> str:
    for path in (
        f"/sys/fs/cgroup/freezer/docker/{service.container_id}/freezer.state",
        f"/sys/fs/cgroup/system.slice/docker-{service.container_id}.scope/cgroup.freeze",
    ):
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            continue
        return {"1": "FROZEN", "0": "THAWED"}.get(text, text)
    return "unknown"
