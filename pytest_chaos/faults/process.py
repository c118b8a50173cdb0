"""Process faults: signal a service's main process from the host side, pause and
resume its container, stop and start it, and kill several in a row (a cascade).

A host-side SIGKILL of the container's process is a crash, so the restart policy
acts; ``docker kill`` would count as a manual stop and defeat it. The pid is pinned
with a pidfd before it is checked, so the checked process is the one signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal as _signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, FaultError, PermissionProblem, UnknownService, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, fault, sweeper, undoer
from ..targets import linux
from ..targets.compose import Service
from ..units import parse_duration, parse_signal
from .base import Effect, FaultHandle, journaled, journaled_service

if TYPE_CHECKING:
    from ..chaos import Chaos

_EXIT_GRACE_S = 5.0
#: How long a kill's undo lets a restart policy act before starting the container.
_POLICY_GRACE_S = 5.0
# Signals that leave the process stopped rather than dead; undone by SIGCONT.
_STOPPING = frozenset({_signal.SIGSTOP, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU})
# Signals sent to end the process: it took effect when the process exited. Others
# (SIGHUP, SIGUSR1...) ask the process to do something: delivered is all one can see.
_TERMINATING = frozenset(
    {_signal.SIGKILL, _signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGABRT}
)


@dataclass
class KillHandle(FaultHandle):
    """A signal sent to a service's main process: which signal, to which host ``pid``
    (``process`` is its name)."""

    signal: str = "SIGKILL"
    pid: int = 0
    process: str = ""
    restarts: int = 0
    #: How long the undo lets a restart policy act before it starts the container.
    start_after_s: float = 0.0
    #: The container's restart policy when it was killed.
    restart_policy: str = ""
    _start: str = ""  # the process's start time: its identity with the pid

    def measure_effect(self) -> Effect:
        sig = _signal.Signals[self.signal]
        who = f"pid {self.pid} ({self.process})"
        if sig in _STOPPING:
            stopped = self._within_grace(lambda: linux.state(self.pid) in ("T", "t"))
            return Effect(stopped, f"{who} {'stopped' if stopped else 'was not stopped'}")
        if sig in _TERMINATING:
            gone = self._within_grace(lambda: not linux.is_alive(self.pid, self._start))
            return Effect(gone, f"{who} {'exited' if gone else f'still runs after {sig.name}'}")
        return Effect(True, f"{self.signal} delivered to {who}")

    def _within_grace(self, happened: Callable[[], bool]) -> bool:
        """Whether the signal's consequence is seen, allowing it the grace period
        after the signal (a process takes a moment to stop or to exit)."""
        while not happened():
            if time.monotonic() > self.applied_at + _EXIT_GRACE_S:
                return False
            time.sleep(0.01)  # poll interval while the signal takes effect
        return True

    def describe(self) -> str:
        return f"kill {self.target} {self.signal} (pid {self.pid}, {self.process})"

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "signal": self.signal,
            "pid": self.pid,
            "process": self.process,
            "restarts": self.restarts,
            "restart_policy": self.restart_policy,
            "start_after_s": self.start_after_s,
        }


@dataclass
class PauseHandle(FaultHandle):
    """A container frozen by its freezer cgroup."""

    _service: Service | None = None

    def measure_effect(self) -> Effect | None:
        if self._service is None:
            return None
        paused = bool(self._service.state().get("Paused"))
        return Effect(paused, "its container is frozen" if paused else "its container runs")

    def describe(self) -> str:
        return f"pause {self.target}"


@dataclass
class StopHandle(FaultHandle):
    """A container stopped as an operator would; ``exit_code`` is its main process's."""

    exit_code: int | None = None
    _service: Service | None = None

    def describe(self) -> str:
        return f"stop {self.target}"

    def measure_effect(self) -> Effect | None:
        if self._service is None:
            return None
        running = bool(self._service.state().get("Running"))
        if running:
            return Effect(False, "its container runs")
        return Effect(True, f"its container is stopped (exit code {self.exit_code})")

    def figures(self) -> dict[str, float | int | str]:
        out = super().figures()
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        return out


@dataclass
class CascadeHandle(FaultHandle):
    """Several kills in order; ``kills`` holds each one's handle."""

    kills: list[KillHandle] = field(default_factory=list)

    def describe(self) -> str:
        return "cascade " + ", ".join(f"{k.target} {k.signal}" for k in self.kills)

    def measure_effect(self) -> Effect:
        effects = [(k.target, k.effect()) for k in self.kills]
        took = all(e is not None and e.took for _, e in effects)
        return Effect(took, "; ".join(f"{t}: {e.evidence if e else '?'}" for t, e in effects))

    def figures(self) -> dict[str, float | int | str]:
        out = super().figures()
        for k in self.kills:
            out[f"{k.target}_killed_after_s"] = round(k.applied_at - self.applied_at, 3)
            if k.undone_at is not None:
                out[f"{k.target}_healthy_after_s"] = round(k.undone_at - self.applied_at, 3)
        return out


# -- signals -----------------------------------------------------------------------------


def check_start_after(value: float | str | None, policy: str) -> float:
    """The undo's wait for a restart policy before it starts a killed container."""
    if value is None:
        return 0.0 if policy == "no" else _POLICY_GRACE_S
    if value in (0, 0.0, "0"):
        return 0.0
    return parse_duration(value, name="start_after")


def kill_signal(value: int | str | _signal.Signals) -> _signal.Signals:
    """The signal a kill fault sends, validated."""
    sig = parse_signal(value)
    if sig == _signal.SIGCONT:
        raise ConfigurationError("SIGCONT is not a fault; it is the undo of SIGSTOP.")
    return sig


def send_signal(
    service: Service, sig: _signal.Signals, pid: int | None = None
) -> tuple[int, str, str]:
    """Signal the service's main process (or ``pid``, checked to be in the container);
    return the pid, the process name and its start time (its identity with the pid)."""
    if pid is None:
        pid = linux.main_process(service.init_pid())
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise UnsafeTarget(
            f"service {service.name!r}: pid {pid} exited before it was signalled."
        ) from None
    try:
        # Checked after pinning: the pidfd refers to this very process from now on.
        service.own_pid(pid)  # the engine's pids are ours, and this one is the container's
        name, started = linux.comm(pid), linux.start_time(pid)
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
    return pid, name, started


@contextmanager
def kill(
    service: Service,
    signal: int | str | _signal.Signals = _signal.SIGKILL,
    *,
    recovery_timeout: float | str = 60.0,
    process: str | None = None,
    start_after: float | str | None = None,
) -> Iterator[KillHandle]:
    """Send ``signal`` to ``service``'s main process, or to the process called
    ``process`` inside it (the top one of that name, e.g. a postmaster rather than its
    backends). On exit, make sure the service runs and is healthy again: resume it
    (SIGCONT) after a stopping signal, and start it if nothing brought it back.

    ``start_after``: how long the undo lets the container's restart policy act before
    it starts the container itself. Default: at once for a container without a
    restart policy (nothing else will), else 5 s. The handle records it, the policy,
    and who brought the service back (``restored_by``)."""
    sig = kill_signal(signal)
    timeout_s = parse_duration(recovery_timeout, name="recovery_timeout")
    policy = service.restart_policy()
    start_after_s = check_start_after(start_after, policy)
    restarts_before = service.restart_count()
    started_before = service.started_at()
    if process is None:
        chosen = linux.main_process(service.init_pid())
    else:
        chosen = linux.top_process_named(service.pids(), process)
    pid = service.own_pid(chosen)
    description = f"kill {service.label} {sig.name} (pid {pid})"
    signalled_at = time.time()
    with journaled(service, "kill", description, {"signal": sig.name, "pid": pid}) as undone:
        pid, name, started = send_signal(service, sig, pid)
        handle = KillHandle(
            kind="kill",
            target=service.label,
            signal=sig.name,
            pid=pid,
            process=name,
            applied_at=time.monotonic(),
            start_after_s=start_after_s,
            restart_policy=policy,
            _start=started,
        )
        try:
            yield handle
        finally:
            handle.keep_effect()
            if sig in _STOPPING:
                # If it died meanwhile, the health wait below brings it back.
                with contextlib.suppress(UnsafeTarget):
                    os.kill(service.own_pid(pid), _signal.SIGCONT)
            elif process is None and handle.put_off is None:
                # The main process: let Docker see the container stop first.
                service.await_exit_seen(
                    pid, started_before, dies_within=_EXIT_GRACE_S, seen_within=_EXIT_GRACE_S
                )
            handle.lifted_at = time.monotonic()
            handle.restored_by = service.ensure_running_and_healthy(
                timeout=timeout_s,
                restarts_before=restarts_before,
                start_after=start_after_s,
                # A process inside the container: only a probe after the kill counts.
                probed_after=signalled_at if process is not None else None,
                put_off=handle.put_off,
            )
            # (A restart by pytest-chaos starts Docker's count afresh.)
            handle.restarts = max(0, service.restart_count() - restarts_before)
            handle.undone_at = time.monotonic()
            undone()


# -- pause, stop -------------------------------------------------------------------------


@contextmanager
def pause(service: Service, *, recovery_timeout: float | str = 60.0) -> Iterator[PauseHandle]:
    """Freeze every process of the container (the freezer cgroup, through Docker's
    pause); undo: thaw it and wait until it is healthy."""
    timeout_s = parse_duration(recovery_timeout, name="recovery_timeout")
    container = service.container()
    if container.attrs["State"].get("Paused"):
        raise FaultError(f"service {service.name!r} is already paused; unpause it first.")
    with journaled(service, "pause", f"pause {service.label}", {}) as undone:
        handle = PauseHandle(kind="pause", target=service.label, _service=service)
        try:
            container.pause()
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            _unpause(service)
            handle.lifted_at = time.monotonic()
            handle.restored_by = service.ensure_running_and_healthy(
                timeout=timeout_s, put_off=handle.put_off
            )
            handle.undone_at = time.monotonic()
            undone()


def _unpause(service: Service) -> None:
    container = service.container()
    if container.attrs["State"].get("Paused"):
        container.unpause()


@contextmanager
def stop(
    service: Service, *, grace: float | str = 10.0, recovery_timeout: float | str = 60.0
) -> Iterator[StopHandle]:
    """Stop the container as an operator would (SIGTERM, then SIGKILL after
    ``grace``); the restart policy does not act on a manual stop. Undo: start it and
    wait until it is healthy."""
    grace_s = parse_duration(grace, name="grace")
    timeout_s = parse_duration(recovery_timeout, name="recovery_timeout")
    service.container()  # refuses a container outside the project
    with journaled(service, "stop", f"stop {service.label}", {}) as undone:
        handle = StopHandle(kind="stop", target=service.label, _service=service)
        try:
            service.stop(grace_s)
            handle.applied_at = time.monotonic()
            handle.exit_code = int(service.state().get("ExitCode", -1))
            yield handle
        finally:
            handle.keep_effect()
            started = _start_if_stopped(service)
            handle.lifted_at = time.monotonic()
            waited = service.ensure_running_and_healthy(timeout=timeout_s, put_off=handle.put_off)
            # It runs because the undo started it, not because it kept running.
            handle.restored_by = "pytest-chaos" if started else waited
            handle.undone_at = time.monotonic()
            undone()


def _start_if_stopped(service: Service) -> bool:
    return service.start_if_stopped()


# -- cascade -----------------------------------------------------------------------------


@contextmanager
def cascade(
    services: Sequence[Service],
    *,
    gaps: float | str | Sequence[float | str] = 0.0,
    signal: int | str | _signal.Signals = _signal.SIGKILL,
    recovery_timeout: float | str = 60.0,
) -> Iterator[CascadeHandle]:
    """Kill ``services`` in the given order, ``gaps`` seconds apart (one value for
    every gap, or one per gap). Undo: every service runs and is healthy again; the
    handle records when each was killed and when each was healthy."""
    if len(services) < 2:
        raise ConfigurationError("a cascade needs at least two services.")
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"a cascade names each service once, got {names}.")
    gap_list = _gaps(gaps, len(services) - 1)
    kill_signal(signal)
    parse_duration(recovery_timeout, name="recovery_timeout")
    handle = CascadeHandle(kind="cascade", target=",".join(names))
    with ExitStack() as stack:
        for i, service in enumerate(services):
            if i and gap_list[i - 1] > 0:
                time.sleep(gap_list[i - 1])  # the experiment's own spacing, not a readiness wait
            handle.kills.append(
                stack.enter_context(kill(service, signal, recovery_timeout=recovery_timeout))
            )
        handle.applied_at = handle.kills[0].applied_at
        try:
            yield handle
        finally:
            handle.keep_effect()
            for each in handle.kills:  # lifted as the cascade is: waits put off alike
                each.put_off = handle.put_off
    handle.undone_at = time.monotonic()


def _gaps(gaps: float | str | Sequence[float | str], count: int) -> list[float]:
    if isinstance(gaps, int | float | str):
        one = 0.0 if gaps in (0, 0.0, "0") else parse_duration(gaps, name="gap")
        return [one] * count
    if len(gaps) != count:
        raise ConfigurationError(f"{count + 1} services need {count} gaps, got {len(gaps)}.")
    return [0.0 if g in (0, 0.0, "0") else parse_duration(g, name="gap") for g in gaps]


# -- undo from the journal ---------------------------------------------------------------


def _journaled_service(data: dict[str, Any]) -> Service | None:
    service = journaled_service(data)
    try:
        service.container()
    except UnknownService:
        return None
    return service


@undoer("kill")
def _undo_kill(data: dict[str, Any]) -> str:
    service = _journaled_service(data)
    if service is None:
        return "its container is gone; nothing to undo"
    if parse_signal(str(data["signal"])) in _STOPPING:
        with contextlib.suppress(UnsafeTarget):
            os.kill(service.own_pid(int(data["pid"])), _signal.SIGCONT)
    _start_if_stopped(service)
    return f"{service.name} is {service.ensure_running_and_healthy(timeout=60.0)}".replace(
        "still-running", "running"
    )


@undoer("pause")
def _undo_pause(data: dict[str, Any]) -> str:
    service = _journaled_service(data)
    if service is None:
        return "its container is gone; nothing to undo"
    _unpause(service)
    service.ensure_running_and_healthy(timeout=60.0)
    return f"{service.name} is unpaused and healthy"


@undoer("stop")
def _undo_stop(data: dict[str, Any]) -> str:
    service = _journaled_service(data)
    if service is None:
        return "its container is gone; nothing to undo"
    _start_if_stopped(service)
    service.ensure_running_and_healthy(timeout=60.0)
    return f"{service.name} is started and healthy"


@sweeper("container-state")
def _sweep_states(dead: DeadRuns) -> list[str]:
    """Say which containers of the projects the dead runs touched are paused or
    stopped: nothing on a container proves who paused or stopped it (the journal
    does, and its entry was lost), so they are named, not changed."""
    from ..targets.compose import PROJECT_LABEL, SERVICE_LABEL

    said = []
    for project in dead.projects:
        for container in dead.client.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={project}"}, ignore_removed=True
        ):
            name = f"{project}/{container.labels.get(SERVICE_LABEL, container.name)}"
            state = container.attrs.get("State") or {}
            if state.get("Paused"):
                said.append(
                    f"left {name} paused: a dead run touched {project}, but nothing proves "
                    f"the pause was its own (docker unpause {container.name} if it was)"
                )
            elif state.get("Status") == "exited" and state.get("ExitCode") in (137, 143):
                said.append(
                    f"left {name} stopped (exit code {state['ExitCode']}): a dead run touched "
                    f"{project}, but nothing proves it stopped it (docker start "
                    f"{container.name} if it did)"
                )
    return said


# -- chaos.<fault> -----------------------------------------------------------------------


@fault(
    "kill",
    grid={},
    journal=("kill",),
    leaves=("container-state",),
    requires=("root", "this-kernel"),
    example="chaos.kill({service})",
)
def _chaos_kill(
    chaos: Chaos,
    service: str,
    signal: int | str | _signal.Signals = _signal.SIGKILL,
    *,
    recovery_timeout: float | str | None = None,
    process: str | None = None,
    start_after: float | str | None = None,
) -> AbstractContextManager[KillHandle]:
    """Signal ``service``'s main process from the host (default SIGKILL: a crash the
    restart policy answers; ``docker kill`` would not), or the top process called
    ``process`` inside it, through a pidfd after checking it belongs to the container.
    Undo: waits until the service runs and is healthy (SIGCONT after SIGSTOP); starts
    the container itself after ``start_after`` (default: at once without a restart
    policy, else 5 s for the policy to act); ``restored_by`` says who brought it back."""
    timeout = chaos.recovery_timeout(recovery_timeout)
    kill_signal(signal)  # bad input fails before Docker is asked anything
    check_start_after(start_after, "no")
    return kill(
        chaos.service(service),
        signal,
        recovery_timeout=timeout,
        process=process,
        start_after=start_after,
    )


@fault(
    "pause",
    grid={},
    journal=("pause",),
    leaves=("container-state",),
    example="chaos.pause({service})",
)
def _chaos_pause(
    chaos: Chaos, service: str, *, recovery_timeout: float | str | None = None
) -> AbstractContextManager[PauseHandle]:
    """Freeze every process of ``service``'s container (freezer cgroup). Undo: thaw,
    wait until healthy."""
    timeout = chaos.recovery_timeout(recovery_timeout)
    return pause(chaos.service(service), recovery_timeout=timeout)


@fault(
    "stop",
    grid={"grace": (10, 1)},
    journal=("stop",),
    leaves=("container-state",),
    example="chaos.stop({service}, grace=1)",
)
def _chaos_stop(
    chaos: Chaos,
    service: str,
    *,
    grace: float | str = 10.0,
    recovery_timeout: float | str | None = None,
) -> AbstractContextManager[StopHandle]:
    """Stop ``service`` as an operator would: SIGTERM, SIGKILL after ``grace``; the
    restart policy ignores it. Undo: start it (``restored_by = pytest-chaos``), wait
    until healthy."""
    parse_duration(grace, name="grace")
    timeout = chaos.recovery_timeout(recovery_timeout)
    return stop(chaos.service(service), grace=grace, recovery_timeout=timeout)


@fault(
    "cascade",
    journal=("kill",),
    leaves=("container-state",),
    requires=("root", "this-kernel"),
    example="chaos.cascade([{service}, {peer}], gaps='0.5s')",
)
def _chaos_cascade(
    chaos: Chaos,
    services: list[str],
    *,
    gaps: float | str | list[float | str] = 0.0,
    signal: int | str | _signal.Signals = _signal.SIGKILL,
    recovery_timeout: float | str | None = None,
) -> AbstractContextManager[CascadeHandle]:
    """Kill ``services`` in order, ``gaps`` apart. Undo: all healthy again, with each
    one's kill and healthy times."""
    kill_signal(signal)
    timeout = chaos.recovery_timeout(recovery_timeout)
    targets = [chaos.service(name) for name in services]
    return cascade(targets, gaps=gaps, signal=signal, recovery_timeout=timeout)
