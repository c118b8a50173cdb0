"""The object behind the ``chaos`` fixture: applies faults for one test and undoes
every one of them, last in first out, when the test ends, whatever happened."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import timeline
from .errors import ConfigurationError, FaultError, UndoFailed
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .faults.base import Effect, FaultHandle
from .units import parse_duration
from .waits import PutOff

if TYPE_CHECKING:
    import pytest
    from hypothesis.strategies import SearchStrategy

    from .faults.base import JournalSlot
    from .journal import Journal
    from .observe.checkers import CheckResult
    from .observe.collateral import Damage
    from .observe.history import History
    from .schedule import Schedule, ScheduleRun
    from .search import SearchResult
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
    until :meth:`undo` or the end of the test. The faults are those registered with
    :func:`pytest_chaos.fault` (``dir(chaos)`` lists them)."""

    def __init__(
        self,
        project: Callable[[], ComposeProject],
        *,
        timeout: float,
        record: Callable[[str, Figure], None],
        journal: Journal | None = None,
        node: pytest.Item | None = None,
    ) -> None:
        #: The session's crash-safe journal: a fault of your own can record itself here
        #: (with an undo registered by ``pytest_chaos.journal.undoer``).
        self.journal = journal
        self._project_factory = project
        self._project: ComposeProject | None = None
        self.timeout = timeout
        self._record = record
        self._applied: list[_Applied] = []
        #: Every fault applied in this test, in force or undone, oldest first.
        self._all_applied: list[_Applied] = []
        self._count = 0
        self.figures: dict[str, Figure] = {}
        #: The test this session belongs to (its markers and options, for explore).
        self.node = node
        # A schedule search runs many trials in one test: only the last one's figures
        # become properties (the others are counted in the search's own figures).
        self._quiet = False
        self._trial_base: int | None = None
        self._trial_figures: dict[str, Figure] = {}
        #: When the test began (wall clock): collateral damage is looked for from here.
        self.started_wall = time.time()
        #: Waits for health of faults lifted by undo(wait=False), and what they raised.
        self._healing: list[threading.Thread] = []
        self._heal_errors: list[BaseException] = []

    # -- targets -------------------------------------------------------------------------

    @property
    def project(self) -> ComposeProject:
        if self._project is None:
            self._project = self._project_factory()
        return self._project

    @property
    def used_project(self) -> ComposeProject | None:
        """The project if this test used it (None: it touched no service)."""
        return self._project

    def service(self, name: str) -> Service:
        """The project's service of that name (UnknownService lists the ones there are),
        or one task of it: ``web.2`` (replica or Swarm slot 2), ``web@node2`` (its
        Swarm task on node2). A fault given ``"web.*"`` acts on every task of it, one
        fault each, and returns their handles as a list."""
        return self.project.service(name)

    def tasks(self, name: str) -> list[str]:
        """The name of each task (container) of service ``name`` now, as
        :meth:`service` and every fault take them: ``["web.1", "web.2"]``."""
        return self.project.task_names(name)

    # -- faults --------------------------------------------------------------------------

    def inject(self, fault: AbstractContextManager[H], *, label: str | None = None) -> H:
        """Enter any fault context manager and hold it until :meth:`undo` or the end of
        the test. This is the extension point: a fault of your own is one function."""
        stack = ExitStack()
        # A @contextmanager's generator keeps its function's name.
        name = getattr(getattr(fault, "gen", None), "__name__", None)
        with timeline.applying(label or name or "a fault") as being_applied:
            try:
                handle = stack.enter_context(fault)
            except Exception as exc:
                refused = docker_refusal(exc, str(label or name or "the fault"))
                if refused is None:
                    raise
                raise refused from exc
            if self.journal is not None:
                # In force now: a replay must not say it was never applied.
                self.journal.mark_applied()
            self._count += 1
            text = label or (handle.describe() if isinstance(handle, FaultHandle) else repr(handle))
            noted = timeline.note_fault(text, handle)
            being_applied.label = text
        applied = _Applied(handle, stack, text, self._count, noted)
        self._applied.append(applied)
        self._all_applied.append(applied)
        self.record(f"chaos_fault_{self._count}", text)
        if isinstance(handle, FaultHandle):
            self.record(f"chaos_fault_{self._count}_kind", handle.kind)
            self.record(f"chaos_fault_{self._count}_target", handle.target)
        else:
            self.record(f"chaos_fault_{self._count}_kind", type(handle).__name__)
        log.info("chaos: applied %s", text)
        return handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """``chaos.<fault>(...)``: every fault registered with
        :func:`pytest_chaos.fault` (the built-in ones and yours), applied through
        :meth:`inject`; ``help(chaos.<fault>)`` shows its arguments."""
        if name.startswith("_"):
            raise AttributeError(name)
        from . import registry

        return registry.bound(registry.find(name), self)

    def __dir__(self) -> list[str]:
        from . import registry

        return sorted(set(super().__dir__()) | set(registry.faults()))

    # -- for faults' builders ------------------------------------------------------------

    def peer(self, peer: str) -> Service | str:
        """A peer named in a fault's arguments: an IPv4 address as it is, else the
        project's service of that name."""
        import ipaddress

        try:
            return str(ipaddress.IPv4Address(peer))
        except ValueError:
            return self.service(peer)

    def recovery_timeout(self, value: float | str | None) -> float | str:
        """A fault's recovery timeout: ``value``, checked, or the session's
        (``--chaos-timeout``) when None."""
        timeout = self.timeout if value is None else value
        parse_duration(timeout, name="recovery_timeout")
        return timeout

    def journaled(
        self, kind: str, description: str, data: dict[str, Any]
    ) -> AbstractContextManager[JournalSlot]:
        """For a fault of your own: write a journal entry of ``kind`` (undone from
        ``data`` by the function registered with ``@pytest_chaos.undoer(kind)``) before
        the block applies the fault; call the slot the block gets once the fault is
        undone. If pytest dies meanwhile, the next session (or ``pytest
        --chaos-cleanup``) undoes it."""
        from .faults.base import journaled_in

        return journaled_in(self.journal, kind, description, data)

    # -- did the faults bite? --------------------------------------------------------------

    def effects(self) -> list[tuple[str, Effect]]:
        """(label, evidence) of every fault applied in this test that gives evidence of
        its effect: read now for those in force, before their undo for the others."""
        out = []
        for applied in self._all_applied:
            if isinstance(applied.handle, FaultHandle):
                effect = applied.handle.effect()
                if effect is not None:
                    out.append((applied.label, effect))
        return out

    def without_effect(self) -> list[tuple[str, Effect]]:
        """The faults whose evidence says they did not take effect."""
        return [(label, e) for label, e in self.effects() if not e.took]

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

    def spans(self) -> list[tuple[int, str, float, float | None]]:
        """(key, label, applied, lifted or None) of every fault this test applied,
        oldest first (time.monotonic() readings): what the live line shows of
        faults that came and went between two of its lines."""
        out = []
        for a in list(self._all_applied):
            applied = getattr(a.handle, "applied_at", None)
            if applied is None:
                applied = a.noted.start if a.noted is not None else time.monotonic()
            lifted = getattr(a.handle, "lifted_at", None) or getattr(a.handle, "undone_at", None)
            if lifted is None and a.noted is not None:
                lifted = a.noted.end
            out.append((id(a), a.label, float(applied), lifted))
        return out

    def undo(self, handle: object, *, wait: bool = True, put_off: PutOff | None = None) -> None:
        """Undo one fault now (faults applied after it stay); a list of handles (a
        fault applied to every task, ``"web.*"``) is undone newest first.

        By default this returns once the target is healthy again, so a recovery
        measured after it includes that wait. ``wait=False`` lifts the fault and
        returns at once: the wait for the target's health runs beside the test
        (:meth:`settle` waits for it, as does the end of the test, and a target that
        does not come back fails the test there), and a recovery measured from
        ``handle.lifted_at`` is the system's own. Given ``put_off``, the wait is
        handed to it instead, for the caller to do (a schedule's step)."""
        if isinstance(handle, list):
            for each in reversed(handle):
                self.undo(each, wait=wait, put_off=put_off)
            return
        for i, applied in enumerate(self._applied):
            if applied.handle is handle:
                del self._applied[i]
                if wait or put_off is not None:
                    self._close(applied, put_off)
                else:
                    self._lift_only(applied)
                return
        raise ConfigurationError("that fault is not in force (already undone?).")

    def _lift_only(self, applied: _Applied) -> None:
        put_off = PutOff(f"the undo of {applied.label}")
        self._close(applied, put_off)
        for health in put_off.take():
            thread = threading.Thread(
                target=self._await_health,
                args=(applied, health),
                name=f"chaos-health-{applied.index}",
                daemon=True,
            )
            thread.start()
            self._healing.append(thread)

    def _await_health(self, applied: _Applied, health: Callable[[], str]) -> None:
        try:
            found = health()
        except BaseException as exc:  # noqa: BLE001 - raised by settle()
            self._heal_errors.append(exc)
            return
        handle = applied.handle
        if isinstance(handle, FaultHandle):
            handle.undone_at = time.monotonic()
            handle.restored_by = found.rpartition("brought back by ")[2] or found
            for key in ("health_wait_s", "restored_by"):
                value = handle.figures().get(key)
                if value is not None:
                    self.record(f"chaos_fault_{applied.index}_{key}", value)

    def settle(self) -> None:
        """Wait for the health of every target whose fault :meth:`undo` lifted with
        ``wait=False``; raise :class:`~pytest_chaos.errors.UndoFailed` if one did not
        come back."""
        while self._healing:
            self._healing.pop(0).join()
        errors, self._heal_errors = self._heal_errors, []
        if errors:
            raise UndoFailed(
                f"{len(errors)} target(s) did not come back after their fault was lifted: "
                + "; ".join(str(e) for e in errors),
                errors,
            ) from errors[0]

    def undo_all(self, put_off: PutOff | None = None) -> list[str]:
        """Undo every fault in force, newest first; return their labels. Every undo
        runs even if one fails; failures are raised together afterwards. Given
        ``put_off`` (an interruption), the waits for health are handed to it."""
        errors: list[BaseException] = []
        labels: list[str] = []
        undone: list[str] = []
        while self._applied:
            applied = self._applied.pop()
            try:
                self._close(applied, put_off)
                undone.append(applied.label)
            except BaseException as exc:  # noqa: BLE001 - collected, re-raised below
                errors.append(exc)
                labels.append(f"{applied.label}: {exc}")
        try:
            self.settle()
        except UndoFailed as exc:
            errors.append(exc)
            labels.append(str(exc))
        if errors:
            raise UndoFailed(
                f"{len(errors)} undo(s) failed (all were attempted): " + "; ".join(labels), errors
            ) from errors[0]
        return undone

    def collateral(self) -> list[Damage]:
        """Services of the project that exited, were OOM-killed, restarted or became
        unhealthy during the test, besides those its faults were aimed at (from
        Docker's events); recorded as the figure ``collateral`` and drawn on the
        timeline. Nothing when the test never used the project; a swarm's tasks run
        on several engines, whose events one manager does not hold: not looked for."""
        from .observe.collateral import collateral
        from .targets.compose import SERVICE_LABEL

        project = self._project
        if project is None or project.kind != "compose project":
            return []
        targets = [a.handle.target for a in self._all_applied if isinstance(a.handle, FaultHandle)]
        now_wall, now_mono = time.time(), time.monotonic()
        found = collateral(
            project.client, project.project_label, project.name, SERVICE_LABEL,
            self.started_wall, targets, until=now_wall,
        )  # fmt: skip
        self.record("collateral", "; ".join(d.describe() for d in found) or "none")
        for damage in found:
            for wall, what in damage.events:
                timeline.note_event(now_mono - (now_wall - wall), "collateral",
                                    f"{damage.service} {what}")  # fmt: skip
        return found

    def _close(self, applied: _Applied, put_off: PutOff | None = None) -> None:
        if isinstance(applied.handle, FaultHandle):
            applied.handle.put_off = put_off
        applied.stack.close()
        if applied.noted is not None:
            applied.noted.end = time.monotonic()
        log.info("chaos: undid %s", applied.label)
        if isinstance(applied.handle, FaultHandle):
            for key, value in applied.handle.figures().items():
                if key not in ("kind", "target"):
                    self.record(f"chaos_fault_{applied.index}_{key}", value)

    # -- history -------------------------------------------------------------------------

    @property
    def history(self) -> History:
        """The test's history: every request its load generators sent, as operations
        with their outcome and the faults in force. Add the final reads with
        ``client = chaos.history.client(); client.invoke("read"); client.ok(found)``."""
        found = timeline.history()
        if found is None:
            raise ConfigurationError("chaos.history exists only while a test runs.")
        return found

    def check(self, *results: CheckResult) -> None:
        """Record checkers' verdicts and figures (``<checker>_<figure>`` properties),
        all of them first, then raise :class:`~pytest_chaos.errors.HistoryCheckFailed`
        for the first that found the history invalid."""
        for result in results:
            for name, value in result.properties().items():
                self.record(name, value)
        for result in results:
            result.raise_if_invalid()

    # -- schedules -----------------------------------------------------------------------

    def run_schedule(self, schedule: Schedule | str) -> ScheduleRun:
        """Apply a fault schedule (:class:`~pytest_chaos.schedule.Schedule`, or its
        one-line text) now: each step from its offset, undone after its duration.
        Returns when its last step is undone, with when each step really began and
        ended."""
        from .schedule import Schedule, run

        if isinstance(schedule, str):
            schedule = Schedule.parse(schedule)
        return run(self, schedule)

    def explore(
        self,
        strategy: SearchStrategy[Schedule],
        example: Callable[[Schedule], object],
        **options: Any,
    ) -> SearchResult:
        """Search fault schedules drawn from ``strategy`` (see
        :func:`pytest_chaos.schedules`) for one under which ``example`` fails.

        ``example(schedule)`` runs one example from the steady state: it starts the
        load, calls :meth:`run_schedule`, and judges what happened (assertions,
        history checkers); an AssertionError or a RecoveryTimeout is a failure, any
        other error ends the search. Every fault is undone after each example, and
        ``steady`` (a check, polled up to ``steady_timeout``) must pass again before
        the next: if it does not, that example failed. A failure counts once it is
        confirmed, ``confirm`` failing runs in a row (default 3); Hypothesis then
        shrinks it, and the smallest is run ``reproduce`` more times (default 3). The
        test fails with that schedule as a list of steps, a ``--chaos-replay`` line and
        a test to paste; its steps, the seed and every figure of the search are
        properties.

        Options: ``max_examples`` (20), ``budget`` and ``shrink_budget`` (durations:
        past them examples are not run, and the report says so), ``seed`` (else
        random, recorded), ``database`` (Hypothesis' example database; None for
        none), ``replay`` (a schedule to run instead of searching; also
        ``@pytest.mark.schedule(replay=...)`` and ``--chaos-replay``)."""
        import inspect

        from .search import explore

        known = list(inspect.signature(explore).parameters)[3:]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"explore takes no option {', '.join(unknown)}; its options are: "
                f"{', '.join(known)}."
            )
        return explore(self, strategy, example, **options)

    def begin_trial(self, *, quiet: bool) -> None:
        """For a search: the next run of its example starts with a timeline, history
        and fault numbering of its own; ``quiet`` keeps its figures out of the
        test's properties."""
        from . import timeline

        if self._trial_base is None:
            self._trial_base = self._count
        self._count = self._trial_base
        self._all_applied = list(self._applied)
        self._quiet = quiet
        self._trial_figures = {}
        timeline.restart()

    def trial_figures(self) -> dict[str, Figure]:
        """The figures recorded since the search's current run began."""
        return dict(self._trial_figures)

    def end_trials(self, *, keep_faults: bool) -> None:
        """For a search, when its last run is over: figures are properties again;
        unless ``keep_faults``, the last run's faults leave the test's own verdict on
        effect (the search judged each run's)."""
        self._quiet = False
        if not keep_faults:
            self._all_applied = list(self._applied)

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
        self._trial_figures[name] = value
        if not self._quiet:
            self._record(name, value)
        if key:
            from .report import KEY_FIGURE

            self.figures[KEY_FIGURE] = name
            if not self._quiet:
                self._record(KEY_FIGURE, name)


def docker_refusal(exc: BaseException, what: str) -> FaultError | None:
    """The Docker SDK's error as a FaultError (an error of the tool or the engine, not
    a failure of the system under test), or None for any other error."""
    if not type(exc).__module__.startswith("docker."):
        return None
    said = getattr(exc, "explanation", None) or str(exc)
    return FaultError(
        f"Docker refused to apply {what}: {said}. The fault was not applied (what was "
        "applied of it was undone); this is an error of the engine or of pytest-chaos, "
        "not a verdict on the system."
    )
