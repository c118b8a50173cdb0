"""The kill fault against the real stack: it acts, it is undone after a failing
test, and it refuses what it must not touch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from pytest_chaos import (
    ForeignTarget,
    RecoveryTimeout,
    UnknownService,
    UnsafeTarget,
    kill,
    wait_for_recovery,
)
from pytest_chaos.faults.process import send_signal
from pytest_chaos.targets import linux

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_kill_crashes_the_process_and_the_undo_waits_for_health(chaos, chaos_project):
    redis = chaos_project.service("redis")
    before = redis.main_pid()
    with kill(redis, "SIGKILL") as handle:
        assert handle.pid == before
        assert handle.process == "redis-server"
        # The process is gone at once (a zombie at most, until tini reaps it).
        wait_for_recovery(lambda: linux.is_gone(before), timeout=5, what="the process to die")
    assert handle.restored_by == "restart-policy"
    assert handle.restarts >= 1
    assert redis.is_healthy()
    assert redis.main_pid() != before


def test_a_restart_policy_backing_off_does_not_hold_the_undo(chaos_project):
    # Crash redis soon after each start until Docker backs off its restarts (it
    # doubles the delay after each quick crash: 1.7, 3.3, 6.5, 12.9 s measured here);
    # the undo's wait then restarts it itself once start_after has passed.
    redis = chaos_project.service("redis")

    def running_again(than: int) -> bool:
        state = redis.state()
        return bool(state.get("Running") and not state.get("Restarting")) and (
            redis.main_pid() not in (0, than)
        )

    backing_off = False
    for _ in range(10):
        wait_for_recovery(lambda: running_again(0), timeout=60, what="redis to run again")
        pid = redis.main_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for_recovery(lambda pid=pid: linux.is_gone(pid), timeout=5, what="its death")
        try:
            # A quick restart takes about 0.1 s; not back within 2 s: Docker backs off.
            wait_for_recovery(
                lambda pid=pid: running_again(pid), timeout=2.0, what="a quick restart"
            )
        except RecoveryTimeout:
            backing_off = True
            break
    assert backing_off, "Docker never backed off its restarts"
    assert redis.state().get("Restarting")
    began = time.monotonic()
    restored_by = redis.ensure_running_and_healthy(timeout=60, start_after=0.2)
    assert restored_by == "pytest-chaos"
    # Bounded by start_after and redis' start, not by Docker's backoff.
    assert time.monotonic() - began < 10.0
    assert redis.is_healthy()


def test_sigstop_is_undone_with_sigcont(chaos_project):
    nginx = chaos_project.service("nginx")
    with kill(nginx, "SIGSTOP") as handle:
        assert _state(handle.pid) == "T"
    assert _state(handle.pid) in ("S", "R")
    assert handle.restored_by == "still-running"


def test_a_container_without_restart_policy_is_started_by_the_undo(chaos_project):
    name = f"chaos-scratch-{uuid.uuid4().hex[:8]}"
    image = chaos_project.service("redis").container().image.id
    container = chaos_project.client.containers.run(
        image,
        ["sleep", "600"],
        name=name,
        detach=True,
        labels={
            "com.docker.compose.project": chaos_project.name,
            "com.docker.compose.service": name,
        },
    )
    try:
        service = chaos_project.service(name)
        assert service.restart_policy() == "no"
        with kill(service, "SIGKILL", recovery_timeout=30) as handle:
            pass
        assert handle.restored_by == "pytest-chaos"
        # No policy will act: the undo starts it at once, and says so.
        assert handle.figures()["start_after_s"] == 0.0
        assert handle.figures()["restart_policy"] == "no"
        assert service.is_healthy()
        with kill(service, "SIGKILL", recovery_timeout=30, start_after="2s") as waited:
            pass
        assert waited.start_after_s == 2.0
        assert waited.undone_at - waited.applied_at >= 2.0  # it let a policy act first
    finally:
        container.remove(force=True)


def test_a_kill_with_a_restart_policy_waits_for_it_and_says_it_brought_the_service_back(
    chaos_project,
):
    redis = chaos_project.service("redis")
    with kill(redis, "SIGKILL", recovery_timeout=60) as handle:
        pass
    assert handle.restart_policy == redis.restart_policy() != "no"
    assert handle.start_after_s == 5.0
    assert handle.restored_by == "restart-policy"


def test_faults_are_undone_after_a_failing_test(pytester, chaos_project):
    """The chaos fixture's undo, in an inner pytest attached to the running stack:
    the test kills redis and fails; afterwards redis runs and is healthy."""
    redis = chaos_project.service("redis")
    restarts = redis.restart_count()
    pytester.makepyfile(
        """
        def test_x(chaos):
            chaos.kill("redis", "SIGKILL")
            assert False, "the experiment failed"
        """
    )
    result = pytester.runpytest_subprocess(f"--chaos-project={chaos_project.name}")
    result.assert_outcomes(failed=1)
    assert redis.is_healthy()
    assert redis.restart_count() > restarts


def test_unknown_service_names_the_known_ones(chaos_project):
    with pytest.raises(
        UnknownService, match=r"no service 'postgress'; its services: nginx, postgres"
    ):
        chaos_project.service("postgress")


def test_a_container_of_another_project_is_refused(chaos_project):
    other = chaos_project.client.containers.run(
        chaos_project.service("redis").container().image.id,
        ["sleep", "600"],
        detach=True,
        labels={"com.docker.compose.project": "someone-else", "com.docker.compose.service": "x"},
    )
    try:
        from pytest_chaos import Service

        impostor = Service(chaos_project, "x", str(other.id))
        with pytest.raises(ForeignTarget, match="not part of compose project"):
            send_signal(impostor, signal.SIGKILL)
        other.reload()
        assert other.status == "running"
    finally:
        other.remove(force=True)


def test_a_pid_of_one_container_is_refused_for_another(chaos_project):
    redis = chaos_project.service("redis")
    nginx = chaos_project.service("nginx")
    with pytest.raises(UnsafeTarget, match="does not name container"):
        linux.check_pid(redis.main_pid(), nginx.container_id)


def _state(pid: int) -> str:
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip()[:1]
