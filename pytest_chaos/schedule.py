"""Fault schedules: several faults, each on a service, each from its own start offset
for its own duration. A :class:`Schedule` reads as a list of steps and is written as
one line of text (``pause postgres at 0s for 1.5s; kill redis at 0.5s for 0.5s``) that
:meth:`Schedule.parse` reads back: what the report prints and ``--chaos-replay`` takes.

:func:`schedules` is a Hypothesis strategy of them over a compose project's services;
it shrinks towards fewer steps, shorter durations, earlier starts and milder
parameters. :func:`run` applies one schedule through the ``chaos`` fixture, on time.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import registry
from .errors import ConfigurationError
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .units import parse_duration
from .waits import PutOff

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

Param = str | int | float


class Applier(Protocol):
    """What a schedule is applied through: the ``chaos`` fixture's object."""

    def inject(self, fault: AbstractContextManager[Any], *, label: str | None = None) -> Any: ...

    def undo(self, handle: object, *, put_off: PutOff | None = None) -> None: ...


@dataclass(frozen=True)
class StepKind:
    """A fault a schedule may use: ``chaos.<name>(service, **params)``, its parameters
    drawn from ``params`` (each a list of values, the mildest first: Hypothesis
    shrinks towards the first)."""

    name: str
    params: Mapping[str, Sequence[Param]] = field(default_factory=dict)


DEFAULT_KINDS = ("kill", "pause", "partition", "latency")


@dataclass(frozen=True)
class Step:
    """One fault of a schedule: ``kind`` on ``service`` from ``at`` seconds after the
    schedule starts, for ``duration`` seconds, with ``params``."""

    kind: str
    service: str
    at: float
    duration: float
    params: tuple[tuple[str, Param], ...] = ()

    @property
    def end(self) -> float:
        return self.at + self.duration

    def describe(self) -> str:
        text = f"{self.kind} {self.service} at {_num(self.at)}s for {_num(self.duration)}s"
        return " ".join([text, *(f"{k}={v}" for k, v in self.params)])


@dataclass(frozen=True)
class Schedule:
    """Steps in order of their start."""

    steps: tuple[Step, ...] = ()

    @property
    def length(self) -> float:
        return max((s.end for s in self.steps), default=0.0)

    @property
    def text(self) -> str:
        """One line, read back by :meth:`parse`."""
        return "; ".join(s.describe() for s in self.steps) or "nothing"

    def describe(self) -> str:
        """A numbered list of the steps, one per line."""
        if not self.steps:
            return "  (no step: the load alone)"
        return "\n".join(f"  {i}. {s.describe()}" for i, s in enumerate(self.steps, 1))

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """The schedule of :attr:`text` (``--chaos-replay`` takes it)."""
        steps = []
        if text.strip() not in ("", "nothing"):
            for part in text.split(";"):
                match = _STEP.fullmatch(part.strip())
                if match is None:
                    raise ConfigurationError(
                        f"cannot read the schedule step {part.strip()!r}: write steps as "
                        "'<fault> <service> at <seconds>s for <seconds>s [name=value ...]', "
                        "separated by ';' (e.g. 'pause postgres at 0s for 1.5s; kill redis "
                        "at 0.5s for 0.5s')."
                    )
                params = tuple(
                    (name, _value(value))
                    for name, value in (p.split("=", 1) for p in match["params"].split())
                )
                steps.append(
                    Step(
                        match["kind"],
                        match["service"],
                        float(match["at"]),
                        float(match["duration"]),
                        params,
                    )
                )
        return cls(tuple(sorted(steps, key=lambda s: s.at)))


_STEP = re.compile(
    r"(?P<kind>[A-Za-z_]\w*)\s+(?P<service>[\w.-]+)\s+at\s+(?P<at>\d+(?:\.\d+)?)s\s+"
    r"for\s+(?P<duration>\d+(?:\.\d+)?)s(?P<params>(?:\s+\w+=\S+)*)"
)


def _num(value: float) -> str:
    return f"{value:g}"


def _value(text: str) -> Param:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# -- the strategy ---------------------------------------------------------------------------


def schedules(
    services: Sequence[str],
    *,
    kinds: Sequence[str | StepKind] = DEFAULT_KINDS,
    max_steps: int = 3,
    length: float | str = 6.0,
    resolution: float | str = 0.5,
    min_duration: float | str | None = None,
) -> SearchStrategy[Schedule]:
    """Schedules of at most ``max_steps`` steps over ``services``, each a fault of
    ``kinds`` (names of registered faults, their parameters drawn from the grid
    their registration declares, or :class:`StepKind`\\ s),
    starting and lasting whole multiples of ``resolution`` seconds (at least
    ``min_duration``, default one ``resolution``), all within ``length`` seconds.

    Two steps on the same service never overlap: a step drawn to start while an
    earlier one holds its service starts when that one ends (and is dropped if that
    is past ``length``). Shrinking makes fewer steps, earlier starts, shorter
    durations, the first kinds and services listed and the mildest parameters."""
    require_hypothesis("pytest_chaos.schedules")
    from hypothesis import strategies as st

    names = _check_services(services)
    chosen = _check_kinds(kinds)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigurationError(f"max_steps must be a whole number >= 1, not {max_steps!r}.")
    length_s = parse_duration(length, name="length")
    tick = parse_duration(resolution, name="resolution")
    shortest = tick if min_duration is None else parse_duration(min_duration, name="min_duration")
    if tick <= 0 or length_s < tick or shortest > length_s:
        raise ConfigurationError(
            f"a schedule of length {length_s:g} s cannot hold a step: the resolution "
            f"({tick:g} s) and min_duration ({shortest:g} s) must be positive and at most "
            "its length."
        )
    ticks = round(length_s / tick)
    min_ticks = max(1, int(-(-shortest // tick)))

    @st.composite
    def step(draw: Callable[[SearchStrategy[Any]], Any]) -> Step:
        kind = draw(st.sampled_from(chosen))
        service = draw(st.sampled_from(names))
        at = draw(st.integers(0, ticks - min_ticks))
        duration = draw(st.integers(min_ticks, ticks - at))
        params = tuple((p, draw(st.sampled_from(list(v)))) for p, v in kind.params.items())
        return Step(kind.name, service, round(at * tick, 6), round(duration * tick, 6), params)

    return st.lists(step(), max_size=max_steps).map(lambda steps: normalize(steps, length=length_s))


def normalize(steps: Sequence[Step], *, length: float) -> Schedule:
    """The schedule of ``steps``, in order of start, a step on a service still held by
    an earlier one moved to start when that one ends (dropped if past ``length``)."""
    free_at: dict[str, float] = {}
    out = []
    for s in sorted(steps, key=lambda s: s.at):
        start = max(s.at, free_at.get(s.service, 0.0))
        if start >= length:
            continue
        moved = Step(s.kind, s.service, start, round(min(s.duration, length - start), 6), s.params)
        free_at[s.service] = moved.end
        out.append(moved)
    return Schedule(tuple(sorted(out, key=lambda s: s.at)))


def step_kind(kind: registry.FaultKind) -> StepKind:
    """The step a schedule may draw of a registered fault: on a service, its declared
    grid's parameters drawn (a fault declared with no grid gets none). Refused, before
    anything is drawn, when a step could not call it: it takes no ``service``, or needs
    an argument its grid does not give."""
    import inspect

    grid = dict(kind.grid or {})
    params = list(inspect.signature(kind.build).parameters.values())[1:]  # less chaos
    missing = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name != "service"
        and p.name not in grid
    ]
    open_ended = kind.grid is None and any(p.kind is p.VAR_KEYWORD for p in params)
    if "service" not in {p.name for p in params} or missing or open_ended:
        if "service" not in {p.name for p in params}:
            why = "it takes no service"
        elif missing:
            why = f"it needs {', '.join(missing)}, which its registration gives no values for"
        else:
            why = "it takes options its registration gives no values for"
        raise ConfigurationError(
            f"a schedule cannot draw fault {kind.name!r}: {why}. Give a StepKind with the "
            "values to draw, or declare them: @fault(..., grid={name: (mildest, ...)})."
        )
    return StepKind(kind.name, grid)


def _check_services(services: Sequence[str]) -> list[str]:
    if (
        isinstance(services, str)
        or not services
        or not all(isinstance(s, str) and s for s in services)
    ):
        raise ConfigurationError(
            f"services must be a non-empty list of service names, not {services!r}."
        )
    return list(dict.fromkeys(services))


def _check_kinds(kinds: Sequence[str | StepKind]) -> list[StepKind]:
    if isinstance(kinds, str) or not kinds:
        raise ConfigurationError(f"kinds must be a non-empty list of fault names, not {kinds!r}.")
    out = []
    for kind in kinds:
        if isinstance(kind, StepKind):
            found = kind
        elif isinstance(kind, str):
            found = step_kind(registry.find(kind))  # UnknownFault lists the faults there are
        else:
            raise ConfigurationError(f"a schedule's kind is a fault's name, not {kind!r}.")
        if not all(values for values in found.params.values()):
            raise ConfigurationError(f"kind {found.name!r} has a parameter with no value.")
        out.append(found)
    return out


# -- running one ---------------------------------------------------------------------------


@dataclass
class StepRun:
    """When a step was really applied and undone, in seconds from the schedule's
    start (an undo that waits for its service's health delays the steps after it)."""

    step: Step
    applied_s: float | None = None
    undone_s: float | None = None


@dataclass
class ScheduleRun:
    schedule: Schedule
    steps: list[StepRun]
    seconds: float = 0.0

    def lateness(self) -> float:
        """The latest any step was applied after its start offset, in seconds."""
        late = [r.applied_s - r.step.at for r in self.steps if r.applied_s is not None]
        return max(late, default=0.0)


def run(
    chaos: Applier,
    schedule: Schedule,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ScheduleRun:
    """Apply ``schedule`` through ``chaos``: each step at its offset from now, lifted
    after its duration. The wait for a service's health that follows an undo runs
    beside the schedule, so it delays no other step; a step on that same service
    starts once it is over. Returns when every step is undone and every wait done;
    faults still in force after an error are undone by ``chaos`` (at the test's end,
    or by the search between examples)."""
    from .errors import UndoFailed

    for s in schedule.steps:  # every kind known before any fault is applied
        registry.find(s.kind)
    runs = [StepRun(s) for s in schedule.steps]
    events = sorted(
        [(r.step.at, 1, i) for i, r in enumerate(runs)]
        + [(r.step.end, 0, i) for i, r in enumerate(runs)]
    )  # at the same instant, undo before apply: a service is free again first
    handles: dict[int, Any] = {}
    waits: dict[str, list[threading.Thread]] = {}
    errors: list[BaseException] = []

    def settle(service: str) -> None:
        for thread in waits.pop(service, []):
            thread.join()

    start = clock()
    completed = False
    try:
        for offset, apply, i in events:
            wait = start + offset - clock()
            if wait > 0:
                sleep(wait)  # the schedule's own clock: the step is due then
            r = runs[i]
            if apply:
                settle(r.step.service)
                build = registry.find(r.step.kind).build
                label = f"step {i + 1}: {r.step.describe()}"
                handles[i] = chaos.inject(
                    build(chaos, r.step.service, **dict(r.step.params)), label=label
                )
                r.applied_s = round(clock() - start, 3)
            elif i in handles:
                put_off = PutOff("its step")
                chaos.undo(handles.pop(i), put_off=put_off)
                r.undone_s = round(clock() - start, 3)
                for health in put_off.take():
                    thread = threading.Thread(
                        target=_wait_for, args=(health, errors), name=f"chaos-health-{i}"
                    )
                    thread.start()
                    waits.setdefault(r.step.service, []).append(thread)
        completed = True
    finally:
        if completed or not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            # After an interruption the waits finish on their own (their threads are
            # not daemons): the interruption's own undo must not wait for them.
            for service in list(waits):
                settle(service)
    if errors:
        raise UndoFailed(
            f"{len(errors)} service(s) did not come back after the schedule's steps: "
            + "; ".join(str(e) for e in errors),
            errors,
        ) from errors[0]
    return ScheduleRun(schedule, runs, round(clock() - start, 3))


def _wait_for(health: Callable[[], str], errors: list[BaseException]) -> None:
    try:
        health()
    except Exception as exc:  # noqa: BLE001 - raised by run() once every wait is done
        errors.append(exc)


def require_hypothesis(what: str) -> None:
    """One sentence, naming the extra, when Hypothesis is not installed."""
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        from .errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"{what} needs Hypothesis, which is not installed: pip install "
            "'pytest-chaos[schedules]'."
        ) from None
