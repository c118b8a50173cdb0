"""Checkers: pure functions that judge a whole history after the faults are healed.

Each returns a :class:`CheckResult`: a verdict, figures that land in JUnit properties
(plain numbers and strings), and, when the history is invalid, the first
counterexample in words. ``result.raise_if_invalid()`` raises
:class:`~pytest_chaos.errors.HistoryCheckFailed` with that counterexample; a test
that wants several checkers' figures runs them all and raises afterwards.

- :func:`set_full`: elements added to a set are all in the final read once
  acknowledged, never twice, never one that was not written.
- :func:`unique_ids`: identifiers the system handed out are never handed out twice.
- :func:`availability`: per fault window, the share of ok, fail and info and the
  slowest ok (figures; a bound on the unknown share makes it a judge).
- :func:`conservation`: a project's own invariants over its final state, each a
  function that returns counterexamples.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, HistoryCheckFailed
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .history import History, Op, Operation, pair, windows

Events = History | Iterable[Op] | Iterable[Operation]

#: How many of each kind of counterexample a result lists (the counts are complete).
SHOWN = 10


@dataclass(frozen=True)
class CheckResult:
    """A checker's verdict. ``figures`` are prefixed with the checker's name when
    they reach a report; ``problems`` lists every kind of violation found, each with
    its first counterexample."""

    checker: str
    valid: bool
    figures: dict[str, float | int | str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def counterexample(self) -> str | None:
        return self.problems[0] if self.problems else None

    def raise_if_invalid(self) -> CheckResult:
        if not self.valid:
            error = HistoryCheckFailed(
                f"the {self.checker} check failed: " + "; ".join(self.problems)
            )
            error.result = self
            raise error
        return self

    def properties(self) -> dict[str, float | int | str]:
        """The verdict and figures as report properties, named ``<checker>_<figure>``."""
        name = self.checker.replace("-", "_")
        out: dict[str, float | int | str] = {f"{name}_valid": "true" if self.valid else "false"}
        out.update({f"{name}_{key}": value for key, value in self.figures.items()})
        return out


def _operations(history: Events) -> list[Operation]:
    """A history as operations: from a :class:`History`, its events, or operations."""
    if isinstance(history, History):
        return history.operations()
    items = list(history)
    if items and isinstance(items[0], Op):
        return pair(items)  # type: ignore[arg-type]
    return items  # type: ignore[return-value]


def _show(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def set_full(
    history: Events,
    *,
    add: str = "add",
    read: str = "read",
    element: Callable[[Any], Hashable] = lambda value: value,
) -> CheckResult:
    """Judge a set: ``add`` operations each add one element (their value), ``read``
    operations return every element present (a list; an element listed twice is a
    duplicate). The *final read* is the last ``ok`` read.

    - lost: added ``ok`` before the final read began, but absent from it. For each,
      the first ok read invoked after its first acknowledgement that lacked it is
      named. (An add acknowledged while the final read ran may be absent.)
    - duplicated: listed more than once in the final read (an add that ended
      ``info`` and was retried must still appear once).
    - phantom: read but never added.
    - resurrected: added with ``fail`` (definitely did not happen) but read.

    An add that ended ``info`` may be present or absent. Invalid without a final read:
    a history nobody read back proves nothing.
    """
    ops = _operations(history)
    reads = [op for op in ops if op.f == read and op.type == "ok"]
    if not reads:
        adds_seen = len({element(op.invoke.value) for op in ops if op.f == add})
        return CheckResult(
            "set-full", False, {"adds": adds_seen},
            (f"no ok {read!r} operation: the final state was never read back",),
        )  # fmt: skip
    final = reads[-1]
    # The first acknowledgement of each element, among those the final read could see
    # (completed before it began). An element acknowledged only while the final read
    # ran (or after) may or may not be in it: it counts as indeterminate.
    adds: dict[Hashable, Operation] = {}
    outcome: dict[Hashable, Counter[str]] = defaultdict(Counter)
    for op in ops:
        if op.f != add:
            continue
        key = element(op.invoke.value)
        kind = op.type
        if kind == "ok" and op.completion.time >= final.invoke.time:  # type: ignore[union-attr]
            kind = "info"
        if kind == "ok":
            adds.setdefault(key, op)
        outcome[key][kind] += 1
    final_counts = Counter(element(v) for v in (final.completion.value or ()))  # type: ignore[union-attr]
    acknowledged = [k for k, seen in outcome.items() if seen["ok"]]
    indeterminate = [k for k, seen in outcome.items() if seen["info"] and not seen["ok"]]
    failed = {k for k, seen in outcome.items() if seen["fail"] and not (seen["ok"] or seen["info"])}
    lost = [k for k in acknowledged if k not in final_counts]
    duplicated = sorted((k for k, n in final_counts.items() if n > 1), key=repr)
    phantom = sorted((k for k in final_counts if k not in outcome), key=repr)
    resurrected = sorted((k for k in final_counts if k in failed), key=repr)
    first_missing = _first_missing(lost, adds, reads, element)
    figures: dict[str, float | int | str] = {
        "adds": len(outcome),
        "acknowledged": len(acknowledged),
        "indeterminate": len(indeterminate),
        "indeterminate_present": sum(1 for k in indeterminate if k in final_counts),
        "failed": len(failed),
        "final_read_size": sum(final_counts.values()),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "phantom": len(phantom),
        "resurrected": len(resurrected),
    }
    problems = []
    if lost:
        first = lost[0]
        seen = first_missing.get(first)
        when = f"; first seen missing by the read at {seen:.3f} s" if seen is not None else ""
        problems.append(
            f"{len(lost)} acknowledged element(s) lost: {_show(lost)} (e.g. {first!r} "
            f"acknowledged at {adds[first].completion.time:.3f} s{when})"  # type: ignore[union-attr]
        )
    if duplicated:
        problems.append(
            f"{len(duplicated)} element(s) read more than once: {_show(duplicated)} "
            f"(e.g. {duplicated[0]!r} {final_counts[duplicated[0]]} times)"
        )
    if phantom:
        problems.append(f"{len(phantom)} element(s) read that were never added: {_show(phantom)}")
    if resurrected:
        problems.append(
            f"{len(resurrected)} element(s) read whose add had failed (definitely not "
            f"done): {_show(resurrected)}"
        )
    return CheckResult(
        "set-full", not problems, figures, tuple(problems),
        {"lost": lost, "duplicated": duplicated, "phantom": phantom,
         "resurrected": resurrected, "first_missing": first_missing},
    )  # fmt: skip


def _first_missing(
    lost: list[Hashable],
    adds: Mapping[Hashable, Operation],
    reads: list[Operation],
    element: Callable[[Any], Hashable],
) -> dict[Hashable, float]:
    """For each lost element, when the first ok read invoked after its add was
    acknowledged lacked it (seconds since the history began)."""
    if not lost:
        return {}
    contents = [
        (r.invoke.time, {element(v) for v in (r.completion.value or ())})  # type: ignore[union-attr]
        for r in reads
    ]
    out = {}
    for key in lost:
        acked = adds[key].completion.time  # type: ignore[union-attr]
        for invoked, present in contents:
            if invoked >= acked and key not in present:
                out[key] = invoked
                break
    return out


def unique_ids(
    history: Events,
    *,
    f: str | None = None,
    id_of: Callable[[Any], Hashable | None] = lambda value: value,
) -> CheckResult:
    """Identifiers handed out by the system (the values of ``ok`` completions of
    ``f``, or of every operation when ``f`` is None, passed through ``id_of``; None
    is skipped) are never handed out twice."""
    ops = _operations(history)
    first: dict[Hashable, Operation] = {}
    duplicates: list[tuple[Hashable, Operation, Operation]] = []
    handed = 0
    for op in ops:
        if op.type != "ok" or (f is not None and op.f != f):
            continue
        ident = id_of(op.completion.value)  # type: ignore[union-attr]
        if ident is None:
            continue
        handed += 1
        if ident in first:
            duplicates.append((ident, first[ident], op))
        else:
            first[ident] = op
    problems = []
    if duplicates:
        ident, one, two = duplicates[0]
        problems.append(
            f"{len(duplicates)} id(s) handed out twice: {ident!r} to process "
            f"{one.invoke.process} at {one.completion.time:.3f} s and to process "  # type: ignore[union-attr]
            f"{two.invoke.process} at {two.completion.time:.3f} s"  # type: ignore[union-attr]
        )
    figures: dict[str, float | int | str] = {"ids": handed, "duplicates": len(duplicates)}
    return CheckResult("unique-ids", not duplicates, figures, tuple(problems))


@dataclass(frozen=True)
class Window:
    """Outcomes of the operations invoked in one fault window."""

    name: str
    ok: int = 0
    fail: int = 0
    info: int = 0
    slowest_ok_s: float | None = None

    @property
    def total(self) -> int:
        return self.ok + self.fail + self.info

    def share(self, kind: str) -> float:
        return getattr(self, kind) / self.total if self.total else 0.0


def availability(
    history: Events,
    *,
    f: str | None = None,
    max_info_share: float | None = None,
) -> CheckResult:
    """Per fault window (``before``; each combination of faults an operation may
    have met, ``during1``... in the order first met, ``duringN_faults`` naming them;
    ``between`` faults; ``after``): how many operations ended ok, fail and info, and
    the slowest ok.
    With ``max_info_share``, invalid when a window's share of unknown outcomes is
    above it: while degraded, a system should refuse clearly (fail), not leave
    clients guessing (info)."""
    if max_info_share is not None and not 0 <= max_info_share <= 1:
        raise ConfigurationError(
            f"max_info_share is a fraction from 0 to 1, got {max_info_share!r}."
        )
    tallies: dict[str, dict[str, Any]] = {}
    for name, op in windows(_operations(history)):
        if f is not None and op.f != f:
            continue
        tally = tallies.setdefault(name, {"ok": 0, "fail": 0, "info": 0, "slowest": None})
        tally[op.type] += 1
        if op.type == "ok" and op.latency is not None:
            tally["slowest"] = max(tally["slowest"] or 0.0, op.latency)
    found = [
        Window(name, t["ok"], t["fail"], t["info"], t["slowest"]) for name, t in tallies.items()
    ]
    figures: dict[str, float | int | str] = {}
    faults_seen = 0
    for window in found:
        if window.name in ("before", "between", "after"):
            label = window.name
        else:
            faults_seen += 1
            label = f"during{faults_seen}"
            figures[f"{label}_faults"] = window.name
        figures[f"{label}_ok"] = window.ok
        figures[f"{label}_fail"] = window.fail
        figures[f"{label}_info"] = window.info
        if window.slowest_ok_s is not None:
            figures[f"{label}_slowest_ok_s"] = round(window.slowest_ok_s, 4)
    problems = []
    if max_info_share is not None:
        for window in found:
            if window.share("info") > max_info_share:
                problems.append(
                    f"{window.info} of {window.total} operations in the window "
                    f"{window.name!r} ended with an unknown outcome "
                    f"({window.share('info'):.0%} > {max_info_share:.0%})"
                )
    return CheckResult("availability", not problems, figures, tuple(problems), {"windows": found})


def conservation(
    invariants: Mapping[str, Callable[[], Iterable[str]]], *, name: str = "conservation"
) -> CheckResult:
    """A project's invariants over its final state: each maps a name to a function
    that returns counterexamples (an empty iterable when the invariant holds). All
    are run; the result lists the first counterexample of each that failed."""
    figures: dict[str, float | int | str] = {}
    problems = []
    details: dict[str, list[str]] = {}
    for rule, find in invariants.items():
        found = list(find())
        figures[f"{rule}_violations"] = len(found)
        details[rule] = found
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            problems.append(f"{rule}: {found[0]}{more}")
    return CheckResult(name, not problems, figures, tuple(problems), details)
