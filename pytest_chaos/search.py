"""The search of fault schedules behind ``chaos.explore``: Hypothesis draws schedules,
each is run against the real stack under the test's load and judged by the test's own
example function; a failure is confirmed by re-runs before Hypothesis may shrink
towards it; the smallest confirmed failure is run again to say how reproducible it is,
and reported as a list of steps, a ``--chaos-replay`` line and a test to paste.

A safety violation (a checker's: data lost, duplicated, resurrected; acknowledged
writes missing) is proven by its run's history: seen once, it fails the search, with
that history kept as evidence and its own replay line, whether or not a re-run shows
it again. Confirmation by re-runs decides only what Hypothesis shrinks towards, so
the smallest schedule reported is one that reproduces.

Real systems are not deterministic, and Hypothesis must not see that: each schedule's
verdict is decided once (it fails ``confirm`` runs in a row, or it does not count) and
remembered, so Hypothesis' own replays of a schedule get the same answer without
running it again.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import logging
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    ChaosError,
    ConfigurationError,
    DataLossDetected,
    FaultDidNotTakeEffect,
    HistoryCheckFailed,
    RecoveryTimeout,
)
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .schedule import Applier, Schedule
from .settings import REPLAY_TAKEN
from .units import parse_duration

if TYPE_CHECKING:
    import pytest
    from hypothesis.strategies import SearchStrategy

    from .faults.base import Effect


class Session(Applier, Protocol):
    """What a search runs through: the ``chaos`` fixture's object."""

    node: pytest.Item | None

    def begin_trial(self, *, quiet: bool) -> None: ...

    def end_trials(self, *, keep_faults: bool) -> None: ...

    def trial_figures(self) -> dict[str, float | int | str]: ...

    def undo_all(self) -> list[str]: ...

    def effects(self) -> list[tuple[str, Effect]]: ...

    def record(self, name: str, value: float | int | str, *, key: bool = False) -> None: ...


log = logging.getLogger("pytest_chaos")

#: What a failing run of an example raises: a verdict on the system (an assertion,
#: lost data, a check of the history, a recovery that did not come).
SYSTEM_FAILURES: tuple[type[BaseException], ...] = (AssertionError, RecoveryTimeout)
#: Failures a run's history proves on its own, the first time they are seen.
SAFETY_VIOLATIONS: tuple[type[BaseException], ...] = (HistoryCheckFailed, DataLossDetected)


class ScheduleFailed(ChaosError, AssertionError):
    """The search found a schedule under which the system failed; the message holds
    the smallest one found, how reproducible it is, and how to replay it."""

    schedule: Schedule | None = None


@dataclass
class Trial:
    """One run of an example under one schedule."""

    schedule: Schedule
    failure: BaseException | None
    seconds: float
    steps: int = 0
    steps_without_effect: int = 0
    #: The figures this run recorded (a failing run's are shown in the end).
    figures: dict[str, Any] = field(default_factory=dict)
    #: A safety violation's proof: the run's history (kept for no other run).
    history: Any = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def violated_safety(self) -> bool:
        return isinstance(self.failure, SAFETY_VIOLATIONS)


@dataclass
class Verdict:
    """A schedule's verdict, decided once: its runs, and whether the failure was
    confirmed (``confirm`` failing runs in a row)."""

    schedule: Schedule
    trials: list[Trial] = field(default_factory=list)
    confirmed: bool = False

    @property
    def failures(self) -> int:
        return sum(t.failed for t in self.trials)


@dataclass
class SearchResult:
    """What ``chaos.explore`` found: every figure it records, and the smallest
    confirmed failing schedule (None: the system held up)."""

    seed: int | None
    examples: int = 0
    runs: int = 0
    not_run: int = 0
    search_s: float = 0.0
    found_after_s: float | None = None
    found_after_examples: int | None = None
    shrink_s: float | None = None
    shrink_runs: int = 0
    shrink_stopped: bool = False
    minimal: Schedule | None = None
    reproduced: tuple[int, int] | None = None
    unconfirmed: list[Verdict] = field(default_factory=list)
    #: Every run that showed a safety violation, in order (each proven by its history).
    violations: list[Trial] = field(default_factory=list)
    steps_applied: int = 0
    steps_without_effect: int = 0

    @property
    def runs_per_minute(self) -> float:
        """Runs of the example (each a real run of the stack) per minute of search."""
        return self.runs / (self.search_s / 60) if self.search_s > 0 else 0.0


class _Confirmed(Exception):
    """Raised to Hypothesis for a schedule whose failure was confirmed."""

    def __init__(self, schedule: Schedule, message: str) -> None:
        super().__init__(f"{schedule.text}: {message}")
        self.schedule = schedule


class Search:
    """One ``chaos.explore`` call (see :meth:`pytest_chaos.chaos.Chaos.explore`)."""

    def __init__(
        self,
        chaos: Session,
        example: Callable[[Schedule], object],
        *,
        steady: Callable[[], object] | None,
        steady_timeout: float,
        confirm: int,
        reproduce: int,
        budget: float | None,
        shrink_budget: float | None,
    ) -> None:
        self.chaos = chaos
        self.example = example
        self.steady = steady
        self.steady_timeout = steady_timeout
        self.confirm = confirm
        self.reproduce = reproduce
        self.budget = budget
        self.shrink_budget = shrink_budget
        self.verdicts: dict[str, Verdict] = {}
        self.stopped: BaseException | None = None
        self.started = 0.0
        self.found_at: float | None = None
        self.result = SearchResult(seed=None)

    # -- one run ------------------------------------------------------------------------

    def trial(self, schedule: Schedule, *, quiet: bool = True) -> Trial:
        """Run the example once under ``schedule``, from the steady state, with a
        timeline and history of its own. Every fault is undone after it, and the
        stack must be back in its steady state within ``steady_timeout``: if not, the
        system did not recover from this schedule, and this run failed."""
        from .observe.recovery import wait_for_recovery

        chaos = self.chaos
        if self.steady is not None and self.result.runs == 0:
            # Before the first run (and outside its history: the check may be an
            # operation of the system): a stack not steady yet is not a finding.
            wait_for_recovery(
                self.steady, timeout=self.steady_timeout, what="the steady state before the search"
            )
        chaos.begin_trial(quiet=quiet)
        began = time.monotonic()
        failure: BaseException | None = None
        try:
            self.example(schedule)
        except SYSTEM_FAILURES as exc:
            failure = exc
        except BaseException as exc:
            # An interruption or an error ends the search: the chaos fixture undoes
            # what is in force (an interruption lifting every fault first), and no
            # replay by Hypothesis may run the example again.
            self.stopped = exc
            raise
        chaos.undo_all()
        effects = chaos.effects()
        if self.steady is not None:
            try:
                wait_for_recovery(
                    self.steady,
                    timeout=self.steady_timeout,
                    what=f"the steady state after the schedule {schedule.text!r}",
                )
            except RecoveryTimeout as exc:
                failure = failure or exc
        trial = Trial(
            schedule,
            failure,
            round(time.monotonic() - began, 3),
            steps=len(effects),
            steps_without_effect=sum(not e.took for _, e in effects),
            figures=chaos.trial_figures(),
        )
        if trial.violated_safety:
            from . import timeline

            current = timeline.current()
            trial.history = current.history if current is not None else None
            self.result.violations.append(trial)
        self.result.runs += 1
        self.result.steps_applied += trial.steps
        self.result.steps_without_effect += trial.steps_without_effect
        log.info(
            "chaos search: %s -> %s in %.1f s",
            schedule.text,
            f"failed ({_first_line(failure)})" if failure is not None else "held",
            trial.seconds,
        )
        return trial

    def rerun(self, schedule: Schedule) -> list[Trial]:
        """Run ``schedule`` ``reproduce`` times; the last run is the test's own: the
        report draws its faults and gives its figures."""
        try:
            return [
                self.trial(schedule, quiet=i < self.reproduce - 1) for i in range(self.reproduce)
            ]
        finally:
            self.chaos.end_trials(keep_faults=True)

    # -- a schedule's verdict -----------------------------------------------------------

    def judge(self, schedule: Schedule) -> Verdict:
        if self.stopped is not None:
            raise self.stopped
        known = self.verdicts.get(schedule.text)
        if known is not None:
            return known
        now = time.monotonic()
        if self.found_at is None:
            self.result.examples += 1
            out_of_time = self.budget is not None and now - self.started > self.budget
        else:
            out_of_time = self.shrink_budget is not None and now - self.found_at > (
                self.shrink_budget
            )
        if out_of_time:
            # Not run: Hypothesis takes it for a pass, and the report says how many.
            self.result.not_run += 1
            if self.found_at is not None:
                self.result.shrink_stopped = True
            return Verdict(schedule)
        verdict = Verdict(schedule)
        trial = self.trial(schedule)
        verdict.trials.append(trial)
        if trial.failed:
            # Confirm before Hypothesis may shrink towards it: ``confirm`` failures in
            # a row. A schedule at the edge of a failure (failing one run in two, say)
            # rarely passes this, so the shrink ends on schedules that reproduce.
            while verdict.trials[-1].failed and len(verdict.trials) < self.confirm:
                verdict.trials.append(self.trial(schedule))
            verdict.confirmed = verdict.failures == len(verdict.trials) >= self.confirm
            if not verdict.confirmed:
                self.result.unconfirmed.append(verdict)
        if self.found_at is not None:
            self.result.shrink_runs += len(verdict.trials)
        elif verdict.confirmed:
            self.found_at = time.monotonic()
            self.result.found_after_s = round(self.found_at - self.started, 1)
            self.result.found_after_examples = self.result.examples
        self.verdicts[schedule.text] = verdict
        return verdict

    # -- the search ---------------------------------------------------------------------

    def search(
        self,
        strategy: SearchStrategy[Schedule],
        *,
        max_examples: int,
        seed: int,
        database: Any,
        key: str,
    ) -> Schedule | None:
        """Hypothesis' search and shrink; the smallest confirmed failing schedule, or
        None when every example held up (or was not run, past the budget)."""
        from hypothesis import Phase, given, settings
        from hypothesis import seed as with_seed
        from hypothesis.errors import Flaky

        options: dict[str, Any] = {
            "max_examples": max_examples,
            # An example is a real run of the stack, seconds long by design: a
            # deadline would judge the machine's speed, not the system.
            "deadline": None,
            # The phases that run examples to search and shrink; "explain" would run
            # each shrunk step's variations again, minutes of real runs, to annotate.
            "phases": (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
            "report_multiple_bugs": False,
        }
        if database is not _DEFAULT:
            options["database"] = database

        def example(schedule: Schedule) -> None:
            verdict = self.judge(schedule)
            if verdict.confirmed:
                last = next(t for t in reversed(verdict.trials) if t.failed)
                raise _Confirmed(schedule, _first_line(last.failure))

        test = settings(**options)(with_seed(seed)(given(strategy)(example)))
        # One key per test, not per function: every explore shares this code.
        test._hypothesis_internal_database_key = hashlib.sha256(  # type: ignore[attr-defined]
            key.encode()
        ).digest()
        self.started = time.monotonic()
        try:
            with _shrink_limit(self.shrink_budget):
                test()
        except _Confirmed as found:
            return found.schedule
        except Flaky as exc:
            # The verdicts are remembered, so a schedule never changes its answer; a
            # Flaky here means the strategy drew differently on replay.
            raise ConfigurationError(
                f"Hypothesis found the schedule search not reproducible ({exc}); the "
                "schedules strategy must draw the same schedule from the same choices."
            ) from exc
        finally:
            self.result.search_s = round(time.monotonic() - self.started, 1)
            if self.found_at is not None:
                self.result.shrink_s = round(time.monotonic() - self.found_at, 1)
        return None


@contextlib.contextmanager
def _shrink_limit(budget: float | None) -> Iterator[None]:
    """Hypothesis stops shrinking after 5 minutes of its own (a module constant it
    documents as patchable); here the search's ``shrink_budget`` governs, and the
    report says when it stopped the shrink. The constant is restored afterwards."""
    from hypothesis.internal.conjecture import engine

    before = engine.MAX_SHRINKING_SECONDS
    # A margin past the budget: the search's own stop (schedules not run) comes first.
    engine.MAX_SHRINKING_SECONDS = int(budget + 60) if budget is not None else 10**9
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = before


class _Default:
    def __repr__(self) -> str:
        return "Hypothesis' default"


_DEFAULT: Any = _Default()


def explore(
    chaos: Session,
    strategy: SearchStrategy[Schedule],
    example: Callable[[Schedule], object],
    *,
    max_examples: int = 20,
    confirm: int = 3,
    reproduce: int = 3,
    steady: Callable[[], object] | None = None,
    steady_timeout: float | str = 60.0,
    budget: float | str | None = None,
    shrink_budget: float | str | None = "10m",
    seed: int | None = None,
    database: Any = _DEFAULT,
    replay: Schedule | str | None = None,
) -> SearchResult:
    """See :meth:`pytest_chaos.chaos.Chaos.explore`."""
    from .schedule import require_hypothesis

    require_hypothesis("chaos.explore")
    from hypothesis.strategies import SearchStrategy

    if not isinstance(strategy, SearchStrategy):
        raise ConfigurationError(
            "explore needs a Hypothesis strategy of schedules (pytest_chaos.schedules(...)), "
            f"not {type(strategy).__name__}."
        )
    if not callable(example):
        raise ConfigurationError("explore needs the example: a function of one schedule.")
    for name, value in (("max_examples", max_examples), ("confirm", confirm),
                        ("reproduce", reproduce)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}.")
    steady_s = parse_duration(steady_timeout, name="steady_timeout")
    budget_s = None if budget is None else parse_duration(budget, name="budget")
    shrink_s = (
        None if shrink_budget is None else parse_duration(shrink_budget, name="shrink_budget")
    )
    node = chaos.node
    marker = _marker(node)
    if replay is None:
        replay = marker.get("replay")
    if replay is None and node is not None:
        replay = node.config.getoption("--chaos-replay", default=None)
        if replay is not None:
            node.config.stash[REPLAY_TAKEN] = True
    if seed is None:
        seed = marker.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigurationError(f"seed must be a whole number, not {seed!r}.")
    if isinstance(replay, str):
        replay = Schedule.parse(replay)

    search = Search(
        chaos,
        example,
        steady=steady,
        steady_timeout=steady_s,
        confirm=confirm,
        reproduce=reproduce,
        budget=budget_s,
        shrink_budget=shrink_s,
    )
    result = search.result
    if replay is not None:
        return _replay(search, replay)

    result.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    key = node.nodeid if node is not None else "explore"
    try:
        minimal = search.search(
            strategy, max_examples=max_examples, seed=result.seed, database=database, key=key
        )
    except BaseException:
        chaos.end_trials(keep_faults=True)
        raise
    if minimal is None:
        # Each example's evidence of effect is counted in the figures; the verdict on
        # effect is the search's (below), not that of the last example's faults.
        chaos.end_trials(keep_faults=False)
        _record_search(chaos, result)
        return _held_up(search)
    result.minimal = minimal
    # How reproducible the smallest failure is.
    trials = search.rerun(minimal)
    result.reproduced = (sum(t.failed for t in trials), len(trials))
    _record_search(chaos, result)
    # The failure to show: the last re-run's, else the last of those that confirmed it;
    # its figures are the test's.
    runs = [*search.verdicts[minimal.text].trials, *trials]
    shown = next(t for t in reversed(runs) if t.failure is not None)
    _show_run(chaos, shown)
    raise _failed(search, minimal, shown.failure or RuntimeError("no failure kept"))


def _replay(search: Search, schedule: Schedule) -> SearchResult:
    """Run exactly ``schedule`` ``reproduce`` times; fail if any run failed."""
    result = search.result
    chaos = search.chaos
    result.minimal = schedule
    trials = search.rerun(schedule)
    failures = [t for t in trials if t.failed]
    result.reproduced = (len(failures), len(trials))
    chaos.record("schedule_replay", schedule.text)
    chaos.record("schedule_reproduced", f"{len(failures)}/{len(trials)}", key=True)
    _record_steps(chaos, schedule)
    if failures:
        failure = failures[-1].failure
        # The report shows a failing run's figures, not those of a last run that held.
        _show_run(chaos, failures[-1])
        raise ScheduleFailed(
            f"the replayed schedule failed {len(failures)} of {len(trials)} runs:\n"
            f"{schedule.describe()}\nwhat failed: {_first_lines(failure)}"
        ) from failure
    return result


def _held_up(search: Search) -> SearchResult:
    result = search.result
    if result.violations:
        raise _violated(search)
    if result.unconfirmed:
        # The system did fail, if not reproducibly: that is not a pass.
        worst = result.unconfirmed[0]
        failure = next(t.failure for t in worst.trials if t.failed)
        lines = [
            f"no failure was confirmed, but {len(result.unconfirmed)} schedule(s) failed "
            "and then held up in a re-run:",
            *(
                f"  {v.schedule.text} (failed {v.failures} of {len(v.trials)} runs)"
                for v in result.unconfirmed[:10]
            ),
            *(
                [f"  and {len(result.unconfirmed) - 10} more"]
                if len(result.unconfirmed) > 10
                else []
            ),
            f"what failed first: {_first_lines(failure)}",
        ]
        raise ScheduleFailed("\n".join(lines)) from failure
    if result.runs == 0:
        raise FaultDidNotTakeEffect(
            f"the search ran no example within its budget ({result.not_run} not run): it "
            "says nothing about the system."
        )
    if result.steps_applied and result.steps_without_effect == result.steps_applied:
        raise FaultDidNotTakeEffect(
            f"none of the {result.steps_applied} steps of the search's schedules took "
            "effect: the system was never disturbed."
        )
    return result


def _violated(search: Search) -> ScheduleFailed:
    """No failure reproduced, but a run violated safety: that run's history is the
    proof, and the search fails on it."""
    result = search.result
    first = result.violations[0]
    verdict = search.verdicts.get(first.schedule.text)
    runs = f"{verdict.failures} of its {len(verdict.trials)}" if verdict else "1 of its 1"
    lines = [
        f"the search saw a safety violation ({len(result.violations)} run(s) in all); a "
        "run's history proves it, whether or not a re-run shows it again. First seen under:",
        first.schedule.describe(),
        f"what failed: {_first_lines(first.failure)}",
        f"that schedule failed {runs} runs; seed {result.seed}.",
        *_other_violations(result, first.schedule),
        *_replay_lines(search, first.schedule),
    ]
    _show_run(search.chaos, first)
    error = ScheduleFailed("\n".join(lines))
    error.schedule = first.schedule
    error.__cause__ = first.failure
    return error


def _other_violations(result: SearchResult, shown: Schedule) -> list[str]:
    others = list(dict.fromkeys(t.schedule.text for t in result.violations))
    others = [text for text in others if text != shown.text]
    if not others:
        return []
    return [
        f"safety violations were also seen under {len(others)} other schedule(s): "
        + "; ".join(others[:3])
        + ("; ..." if len(others) > 3 else "")
    ]


def _replay_lines(search: Search, schedule: Schedule) -> list[str]:
    node = search.chaos.node
    if node is None:
        return []
    lines = ["", "replay it:", f"  pytest {node.nodeid!s} --chaos-replay='{schedule.text}'"]
    pasted = paste_test(node, schedule)
    if pasted:
        lines += ["or paste this test:", "", textwrap.indent(pasted, "    ")]
    return lines


def _show_run(chaos: Session, trial: Trial) -> None:
    """Make the figures of ``trial`` (a failing run) the test's: the last run's, which
    may have held up, must not be what the report shows beside its failure; a safety
    violation's history goes into the evidence."""
    for name, value in trial.figures.items():
        chaos.record(name, value)
    if trial.history is not None:
        from . import timeline

        timeline.keep_history(f"violation {trial.schedule.text}", trial.history)


def _failed(search: Search, minimal: Schedule, failure: BaseException) -> ScheduleFailed:
    result = search.result
    failures, runs = result.reproduced or (0, 0)
    found = (
        f"found after {result.found_after_examples} example(s) ({result.found_after_s:g} s), "
        f"shrunk in {result.shrink_runs} more run(s) ({result.shrink_s or 0:g} s)"
    )
    lines = [
        f"the schedule search found a failure and shrank it to {len(minimal.steps)} step(s) "
        f"(failed {failures} of {runs} re-runs):",
        minimal.describe(),
        f"what failed: {_first_lines(failure)}",
        f"{found}; seed {result.seed}.",
    ]
    if result.unconfirmed:
        first = next(t.failure for t in result.unconfirmed[0].trials if t.failed)
        lines.append(
            f"{len(result.unconfirmed)} other schedule(s) failed, then held up in a "
            "re-run: "
            + "; ".join(
                f"{v.schedule.text} ({v.failures} of {len(v.trials)})"
                for v in result.unconfirmed[:3]
            )
            + ("; ..." if len(result.unconfirmed) > 3 else "")
            + f"; the first said {_first_line(first)}"
        )
    if result.shrink_stopped:
        lines.append(
            "shrinking stopped at its budget (shrink_budget): a smaller schedule may exist."
        )
    lines += _other_violations(result, minimal)
    lines += _replay_lines(search, minimal)
    error = ScheduleFailed("\n".join(lines))
    error.schedule = minimal
    error.__cause__ = failure
    return error


def paste_test(node: pytest.Item, schedule: Schedule) -> str | None:
    """The test's own source, renamed ``<name>_replay`` and marked to replay
    ``schedule`` instead of searching; None when its source cannot be read."""
    function = getattr(node, "function", None)
    if function is None:
        return None
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    name = function.__name__
    renamed = _without_schedule_markers(source).replace(f"def {name}(", f"def {name}_replay(", 1)
    return f"@pytest.mark.schedule(replay={schedule.text!r})\n{renamed}"


def _without_schedule_markers(source: str) -> str:
    """``source`` (one function) without its own ``schedule`` markers: the pasted test
    carries one, the replay's."""
    try:
        function = ast.parse(source).body[0]
    except (SyntaxError, IndexError):
        return source
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
        return source
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    for decorator in function.decorator_list:
        called = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(called, ast.Attribute) and called.attr == "schedule":
            drop.update(range(decorator.lineno - 1, decorator.end_lineno or decorator.lineno))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def _record_search(chaos: Session, result: SearchResult) -> None:
    chaos.record("schedule_seed", str(result.seed))
    chaos.record("schedule_examples", result.examples)
    chaos.record("schedule_runs", result.runs)
    chaos.record("schedule_examples_not_run", result.not_run)
    chaos.record("schedule_search_s", result.search_s)
    chaos.record("schedule_runs_per_minute", round(result.runs_per_minute, 2))
    chaos.record("schedule_unconfirmed_failures", len(result.unconfirmed))
    chaos.record("schedule_steps_applied", result.steps_applied)
    chaos.record("schedule_steps_without_effect", result.steps_without_effect)
    if result.found_after_s is not None:
        chaos.record("schedule_found_after_s", result.found_after_s)
        chaos.record("schedule_found_after_examples", result.found_after_examples or 0)
        chaos.record("schedule_shrink_s", result.shrink_s or 0.0)
        chaos.record("schedule_shrink_runs", result.shrink_runs)
        chaos.record("schedule_shrink_stopped", "yes" if result.shrink_stopped else "no")
    if result.minimal is not None:
        chaos.record("schedule_replay", result.minimal.text)
        chaos.record("schedule_minimal_steps", len(result.minimal.steps))
        _record_steps(chaos, result.minimal)
    if result.reproduced is not None:
        failures, runs = result.reproduced
        chaos.record("schedule_reproduced", f"{failures}/{runs}", key=True)
    elif result.minimal is None:
        # Held: run, and not one of its runs failed (a failure a re-run did not
        # confirm is no hold).
        held = result.examples - result.not_run - len(result.unconfirmed)
        chaos.record("schedule_examples_held", held, key=True)


def _record_steps(chaos: Session, schedule: Schedule) -> None:
    for i, step in enumerate(schedule.steps, 1):
        chaos.record(f"schedule_step_{i}", step.describe())


def _marker(node: pytest.Item | None) -> dict[str, Any]:
    """The ``schedule`` marker's keyword arguments (``replay``, ``seed``), nearest
    first."""
    if node is None:
        return {}
    found: dict[str, Any] = {}
    for mark in node.iter_markers("schedule"):
        for name, value in mark.kwargs.items():
            if name not in ("replay", "seed"):
                raise ConfigurationError(
                    f"@pytest.mark.schedule takes replay= and seed=, not {name}=."
                )
            found.setdefault(name, value)
    return found


def _first_line(failure: BaseException | None) -> str:
    text = str(failure).strip().splitlines()
    return f"{type(failure).__name__}: {text[0] if text else ''}"


def _first_lines(failure: BaseException | None, count: int = 6) -> str:
    text = str(failure).strip().splitlines()
    head = "\n  ".join(text[:count])
    more = f"\n  ... ({len(text) - count} more lines)" if len(text) > count else ""
    return f"{type(failure).__name__}: {head}{more}"
