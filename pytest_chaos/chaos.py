"""The object behind the ``chaos`` fixture: applies faults for one test and undoes
every one of them, last in first out, when the test ends, whatever happened."""

from __future__ import annotations

import logging
import signal as _signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import timeline
from .errors import ConfigurationError, UndoFailed
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .faults.base import FaultHandle
from .units import parse_duration

if TYPE_CHECKING:
    from .faults.latency import LatencyHandle
    from .faults.network import BandwidthHandle, NetworkHandle
    from .faults.postgres import HogHandle, MaxConnectionsHandle
    from .faults.process import CascadeHandle, KillHandle, PauseHandle, StopHandle
    from .faults.resources import ContentionHandle, CpuHandle, IoHandle, MemoryHandle
    from .journal import Journal
    from .targets.compose import ComposeProject, Service

H = TypeVar("H")
log = logging.getLogger("pytest_chaos")
Figure = float | int | str


@dataclass
class _Applied:
    handle: object
    stack: ExitStack
    label: str
    index: int
    noted: Any = None  # its span on the test's timeline


class Chaos:
    """Applies faults for one test. Each ``chaos.<fault>(...)`` call validates its
    arguments, applies the fault, and returns its handle; the fault stays in force
    until :meth:`undo` or the end of the test."""

    def __init__(
        self,
        project: Callable[[], ComposeProject],
        *,
        timeout: float,
        record: Callable[[str, Figure], None],
        journal: Journal | None = None,
    ) -> None:
        #: The session's crash-safe journal: a fault of your own can record itself here
        #: (with an undo registered by ``pytest_chaos.journal.undoer``).
        self.journal = journal
        self._project_factory = project
        self._project: ComposeProject | None = None
        self.timeout = timeout
        self._record = record
        self._applied: list[_Applied] = []
        self._count = 0
        self.figures: dict[str, Figure] = {}

    # -- targets -------------------------------------------------------------------------

    @property
    def project(self) -> ComposeProject:
        if self._project is None:
            self._project = self._project_factory()
        return self._project

    def service(self, name: str) -> Service:
        """The project's service of that name (UnknownService lists the ones there are)."""
        return self.project.service(name)

    # -- faults --------------------------------------------------------------------------

    def inject(self, fault: AbstractContextManager[H], *, label: str | None = None) -> H:
        """Enter any fault context manager and hold it until :meth:`undo` or the end of
        the test. This is the extension point: a fault of your own is one function."""
        stack = ExitStack()
        handle = stack.enter_context(fault)
        self._count += 1
        text = label or (handle.describe() if isinstance(handle, FaultHandle) else repr(handle))
        self._applied.append(
            _Applied(handle, stack, text, self._count, timeline.note_fault(text, handle))
        )
        self.record(f"chaos_fault_{self._count}", text)
        if isinstance(handle, FaultHandle):
            self.record(f"chaos_fault_{self._count}_kind", handle.kind)
            self.record(f"chaos_fault_{self._count}_target", handle.target)
        else:
            self.record(f"chaos_fault_{self._count}_kind", type(handle).__name__)
        log.info("chaos: applied %s", text)
        return handle

    def kill(
        self,
        service: str,
        signal: int | str | _signal.Signals = _signal.SIGKILL,
        *,
        recovery_timeout: float | str | None = None,
        process: str | None = None,
    ) -> KillHandle:
        """Signal ``service``'s main process from the host (default SIGKILL: a crash the
        restart policy answers). Undo: the service runs and is healthy again."""
        from .faults.process import kill, kill_signal

        timeout = self.timeout if recovery_timeout is None else recovery_timeout
        parse_duration(timeout, name="recovery_timeout")
        kill_signal(signal)  # bad input fails before Docker is asked anything
        target = self.service(service)
        return self.inject(kill(target, signal, recovery_timeout=timeout, process=process))

    def pause(self, service: str, *, recovery_timeout: float | str | None = None) -> PauseHandle:
        """Freeze ``service``'s container (freezer cgroup). Undo: thaw, wait healthy."""
        from .faults.process import pause

        timeout = self._timeout(recovery_timeout)
        return self.inject(pause(self.service(service), recovery_timeout=timeout))

    def stop(
        self,
        service: str,
        *,
        grace: float | str = 10.0,
        recovery_timeout: float | str | None = None,
    ) -> StopHandle:
        """Stop ``service`` as an operator would (SIGTERM, SIGKILL after ``grace``).
        Undo: start it, wait healthy."""
        from .faults.process import stop

        parse_duration(grace, name="grace")
        timeout = self._timeout(recovery_timeout)
        return self.inject(stop(self.service(service), grace=grace, recovery_timeout=timeout))

    def cascade(
        self,
        services: list[str],
        *,
        gaps: float | str | list[float | str] = 0.0,
        signal: int | str | _signal.Signals = _signal.SIGKILL,
        recovery_timeout: float | str | None = None,
    ) -> CascadeHandle:
        """Kill ``services`` in order, ``gaps`` apart. Undo: all healthy again."""
        from .faults.process import cascade, kill_signal

        kill_signal(signal)
        timeout = self._timeout(recovery_timeout)
        targets = [self.service(name) for name in services]
        return self.inject(cascade(targets, gaps=gaps, signal=signal, recovery_timeout=timeout))

    def partition(
        self,
        service: str,
        peers: list[str] | None = None,
        *,
        mode: str = "drop",
        direction: str = "both",
    ) -> NetworkHandle:
        """Cut ``service`` off from ``peers`` (service names or IPv4 addresses; None:
        everything but loopback). mode ``drop`` (timeouts) or ``reject`` (refusals);
        direction ``both``, ``egress`` or ``ingress``."""
        from .faults.network import check_direction, check_mode, partition

        check_mode(mode)
        check_direction(direction)
        target = self.service(service)
        others = [self._peer(p) for p in peers or []]
        return self.inject(partition(target, others, mode=mode, direction=direction))

    def loss(
        self,
        service: str,
        percent: float | str,
        peers: list[str] | None = None,
        *,
        direction: str = "both",
    ) -> NetworkHandle:
        """Drop ``percent`` of packets between ``service`` and ``peers``."""
        from .faults.network import check_direction, check_percent, loss

        check_percent(percent)
        check_direction(direction)
        target = self.service(service)
        others = [self._peer(p) for p in peers or []]
        return self.inject(loss(target, percent, others, direction=direction))

    def bandwidth(self, service: str, rate: str | int, **options: Any) -> BandwidthHandle:
        """Limit what ``service`` sends to ``rate`` (e.g. '1mbit')."""
        from .faults.network import bandwidth, parse_rate

        parse_rate(rate)
        return self.inject(bandwidth(self.service(service), rate, **options))

    def latency(
        self,
        service: str,
        delay: float | str,
        *,
        jitter: float | str = 0,
        peers: list[str] | None = None,
        method: str = "auto",
    ) -> LatencyHandle:
        """Delay what ``service`` sends (to ``peers``, or everything): netem where the
        kernel has it, else the NFQUEUE delayer; ``handle.method`` says which."""
        from .faults.latency import check_delay, latency

        check_delay(delay, jitter)
        target = self.service(service)
        others = [self._peer(p) for p in peers or []]
        return self.inject(latency(target, delay, jitter=jitter, peers=others, method=method))

    def memory_cap(
        self, service: str, limit: int | str, *, allow_swap: bool = False
    ) -> MemoryHandle:
        """Cap ``service``'s memory (e.g. '256m') so the OOM killer acts past it."""
        from .faults.resources import memory_cap
        from .units import parse_size

        parse_size(limit, name="memory limit")
        return self.inject(memory_cap(self.service(service), limit, allow_swap=allow_swap))

    def cpu_quota(self, service: str, cpus: float) -> CpuHandle:
        """Let ``service`` use at most ``cpus`` CPUs (e.g. 0.5)."""
        from .faults.resources import check_cpus, cpu_quota

        check_cpus(cpus)
        return self.inject(cpu_quota(self.service(service), cpus))

    def io_throttle(
        self, service: str, *, path: str | None = None, **limits: int | str
    ) -> IoHandle:
        """Throttle ``service``'s block I/O: read_bps, write_bps, read_iops, write_iops."""
        from .faults.resources import io_throttle

        return self.inject(io_throttle(self.service(service), path=path, **limits))

    def io_contention(self, service: str, *, workers: int = 2, **options: Any) -> ContentionHandle:
        """Compete for ``service``'s disk with ``workers`` stress-ng writers."""
        from .faults.resources import io_contention

        return self.inject(io_contention(self.service(service), workers=workers, **options))

    def max_connections(self, service: str, value: int) -> MaxConnectionsHandle:
        """Restart PostgreSQL ``service`` with a lower max_connections."""
        from .faults.postgres import max_connections

        return self.inject(max_connections(self.service(service), value))

    def connection_hog(self, service: str, dsn: str, connections: int) -> HogHandle:
        """Hold ``connections`` idle connections to PostgreSQL ``service`` at ``dsn``."""
        from .faults.postgres import connection_hog

        return self.inject(connection_hog(self.service(service), dsn, connections))

    def _peer(self, peer: str) -> Service | str:
        import ipaddress

        try:
            return str(ipaddress.IPv4Address(peer))
        except ValueError:
            return self.service(peer)

    def _timeout(self, value: float | str | None) -> float | str:
        timeout = self.timeout if value is None else value
        parse_duration(timeout, name="recovery_timeout")
        return timeout

    # -- undo ----------------------------------------------------------------------------

    @property
    def active(self) -> list[object]:
        """Handles of the faults in force, oldest first."""
        return [a.handle for a in self._applied]

    def in_force(self) -> list[tuple[str, float]]:
        """(label, time.monotonic() when applied) of each fault in force, oldest first."""
        out = []
        for a in self._applied:
            since = getattr(a.handle, "applied_at", None)
            if since is None and a.noted is not None:
                since = a.noted.start
            out.append((a.label, float(since if since is not None else time.monotonic())))
        return out

    def undo(self, handle: object) -> None:
        """Undo one fault now (faults applied after it stay)."""
        for i, applied in enumerate(self._applied):
            if applied.handle is handle:
                del self._applied[i]
                self._close(applied)
                return
        raise ConfigurationError("that fault is not in force (already undone?).")

    def undo_all(self) -> None:
        """Undo every fault in force, newest first. Every undo runs even if one fails;
        failures are raised together afterwards."""
        errors: list[BaseException] = []
        labels: list[str] = []
        while self._applied:
            applied = self._applied.pop()
            try:
                self._close(applied)
            except BaseException as exc:  # noqa: BLE001 - collected, re-raised below
                errors.append(exc)
                labels.append(f"{applied.label}: {exc}")
        if errors:
            raise UndoFailed(
                f"{len(errors)} undo(s) failed (all were attempted): " + "; ".join(labels), errors
            ) from errors[0]

    def _close(self, applied: _Applied) -> None:
        applied.stack.close()
        if applied.noted is not None:
            applied.noted.end = time.monotonic()
        log.info("chaos: undid %s", applied.label)
        if isinstance(applied.handle, FaultHandle):
            for key, value in applied.handle.figures().items():
                if key not in ("kind", "target"):
                    self.record(f"chaos_fault_{applied.index}_{key}", value)

    # -- figures -------------------------------------------------------------------------

    def record(self, name: str, value: Figure, *, key: bool = False) -> None:
        """Record a measured figure: it becomes a JUnit property of the test and a line
        of the terminal summary. ``key=True`` makes it the figure the end-of-run
        summary table shows for this test."""
        if not name or not isinstance(name, str):
            raise ConfigurationError(f"a figure needs a name, got {name!r}.")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigurationError(
                f"figure {name!r} must be a number or a string, not {type(value).__name__}."
            )
        self.figures[name] = value
        self._record(name, value)
        if key:
            from .report import KEY_FIGURE

            self.figures[KEY_FIGURE] = name
            self._record(KEY_FIGURE, name)
