"""chaos.undo(handle, wait=False) on the real stack: the fault is lifted at once and
the wait for the target's health runs beside the test, so a recovery measured from
``handle.lifted_at`` is the system's and not that wait's; settle() (and the end of
the test) waits for it, and a target that does not come back fails there."""

from __future__ import annotations

import time

import pytest

from pytest_chaos import UndoFailed, wait_for_recovery

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _health(service) -> str:
    return service.container().attrs["State"].get("Health", {}).get("Status", "none")


def _paused_until_unhealthy(chaos, service):
    """Pause ``service`` until Docker's health check has failed: its undo then has a
    real wait for health (a probe must pass again)."""
    handle = chaos.pause(service.name)
    wait_for_recovery(
        lambda: _health(service) == "unhealthy", timeout=60, interval=0.2,
        what=f"{service.name} marked unhealthy while paused", on_timeline=False,
    )  # fmt: skip
    return handle


def test_a_lifted_fault_leaves_the_health_wait_beside_the_test(chaos, chaos_project):
    redis = chaos_project.service("redis")
    handle = _paused_until_unhealthy(chaos, redis)
    chaos.undo(handle, wait=False)
    # Lifted at once: the container runs again, though Docker has not seen a probe
    # pass yet (the wait for that is the part the test no longer waits for).
    assert handle.lifted_at is not None
    assert not redis.container().attrs["State"]["Paused"]
    asked = time.monotonic()
    answered = wait_for_recovery(
        lambda: redis.container().exec_run(["redis-cli", "ping"]).output.strip() == b"PONG",
        since=handle, timeout=30, interval=0.02, what="redis answering",
    )  # fmt: skip
    # Measured from the thaw (since=handle), whatever the health wait is doing.
    assert asked - handle.lifted_at <= answered.recovery_time_s
    assert answered.recovery_time_s <= time.monotonic() - handle.lifted_at
    chaos.settle()
    assert redis.is_healthy()
    assert handle.undone_at is not None
    assert handle.undone_at >= handle.lifted_at
    figures = chaos.figures
    assert figures["chaos_fault_1_health_wait_s"] == round(handle.undone_at - handle.lifted_at, 3)
    assert figures["chaos_fault_1_restored_by"] == "still-running"


def test_a_target_that_does_not_come_back_fails_at_settle(chaos, chaos_project):
    redis = chaos_project.service("redis")
    handle = chaos.inject(_pause_with_no_time_to_recover(chaos, redis))
    wait_for_recovery(
        lambda: _health(redis) == "unhealthy", timeout=60, interval=0.2,
        what="redis marked unhealthy while paused", on_timeline=False,
    )  # fmt: skip
    chaos.undo(handle, wait=False)
    with pytest.raises(UndoFailed, match="did not come back after their fault was lifted"):
        chaos.settle()
    chaos.settle()  # the failure was reported once; nothing is left to wait for
    wait_for_recovery(redis.is_healthy, timeout=60, what="redis healthy for the next test")


def _pause_with_no_time_to_recover(chaos, service):
    from pytest_chaos.faults.process import pause

    return pause(service, recovery_timeout=0.001)
