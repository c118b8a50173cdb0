"""Process faults: signal a service's main process from the host side.

A host-side SIGKILL of the container's process is a crash, so the restart policy
acts; ``docker kill`` would count as a manual stop and defeat it. The pid is pinned
with a pidfd before it is checked, so the checked process is the one signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal as _signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ConfigurationError, PermissionProblem, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..targets import linux
from ..targets.compose import Service
from ..units import parse_duration, parse_signal
from .base import FaultHandle

# Signals that leave the process stopped rather than dead; undone by SIGCONT.
_EXIT_GRACE_S = 5.0
_STOPPING = frozenset({_signal.SIGSTOP, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU})


@dataclass
class KillHandle(FaultHandle):
    signal: str = "SIGKILL"
    pid: int = 0
    process: str = ""

    restarts: int = 0

    def describe(self) -> str:
        return f"kill {self.target} {self.signal} (pid {self.pid}, {self.process})"

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "signal": self.signal,
            "pid": self.pid,
            "process": self.process,
            "restarts": self.restarts,
        }


def send_signal(service: Service, sig: _signal.Signals) -> tuple[int, str]:
    """Signal the service's main process; return its pid and name."""
    pid = linux.main_process(service.init_pid())
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise UnsafeTarget(
            f"service {service.name!r}: pid {pid} exited before it was signalled."
        ) from None
    try:
        # Checked after pinning: the pidfd refers to this very process from now on.
        linux.check_pid(pid, service.container_id)
        name = linux.comm(pid)
        try:
            _signal.pidfd_send_signal(pidfd, sig)
        except PermissionError:
            raise PermissionProblem(
                f"not allowed to send {sig.name} to {service.name!r} (pid {pid}): "
                "run pytest as root (sudo)."
            ) from None
        except ProcessLookupError:
            raise UnsafeTarget(
                f"service {service.name!r}: pid {pid} exited before it was signalled."
            ) from None
    finally:
        os.close(pidfd)
    return pid, name


def _await_consequence(service: Service, pid: int, started_before: object) -> None:
    """Before judging recovery, let the signal take effect: if the process dies within
    a grace period, wait until Docker has seen its container stop or restart (its
    state may still say "running" for a moment). A process that handles the signal
    and lives on ends the wait after the grace period."""
    deadline = time.monotonic() + _EXIT_GRACE_S
    while not linux.is_gone(pid):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    deadline = time.monotonic() + _EXIT_GRACE_S
    while time.monotonic() < deadline:
        state = service.state()
        if not state.get("Running") or state.get("StartedAt") != started_before:
            return
        time.sleep(0.02)


def kill_signal(value: int | str | _signal.Signals) -> _signal.Signals:
    """The signal a kill fault sends, validated."""
    sig = parse_signal(value)
    if sig == _signal.SIGCONT:
        raise ConfigurationError("SIGCONT is not a fault; it is the undo of SIGSTOP.")
    return sig


@contextmanager
def kill(
    service: Service,
    signal: int | str | _signal.Signals = _signal.SIGKILL,
    *,
    recovery_timeout: float | str = 60.0,
) -> Iterator[KillHandle]:
    """Send ``signal`` to ``service``'s main process. On exit, make sure the service
    runs and is healthy again: resume it (SIGCONT) after a stopping signal, and start
    it if no restart policy brought it back."""
    sig = kill_signal(signal)
    timeout_s = parse_duration(recovery_timeout, name="recovery_timeout")
    restarts_before = service.restart_count()
    started_before = service.state().get("StartedAt")
    pid, name = send_signal(service, sig)
    handle = KillHandle(
        kind="kill",
        target=service.name,
        signal=sig.name,
        pid=pid,
        process=name,
        applied_at=time.monotonic(),
    )
    try:
        yield handle
    finally:
        if sig in _STOPPING:
            # If it died meanwhile, the health wait below brings it back.
            with contextlib.suppress(UnsafeTarget):
                os.kill(linux.check_pid(pid, service.container_id), _signal.SIGCONT)
        else:
            _await_consequence(service, pid, started_before)
        handle.restored_by = service.ensure_running_and_healthy(
            timeout=timeout_s, restarts_before=restarts_before
        )
        handle.restarts = service.restart_count() - restarts_before
        handle.undone_at = time.monotonic()
