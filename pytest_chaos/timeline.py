"""What happened during a test, in time order, for the HTML report: the faults'
windows, every request the load generators sent, the recoveries waited for, and the
kernel events BPF saw. The ``chaos`` fixture opens a timeline for each test; the
pieces note themselves into the open one (one test runs at a time in a process).

Times are ``time.monotonic()`` readings (BPF's timestamps use the same clock) and are
written relative to the timeline's start.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .observe.history import History


@dataclass
class _Fault:
    label: str
    kind: str
    target: str
    start: float
    handle: Any = None
    end: float | None = None


@dataclass
class Timeline:
    nodeid: str
    start: float = field(default_factory=time.monotonic)
    start_wall: float = field(default_factory=time.time)
    faults: list[_Fault] = field(default_factory=list)
    loads: list[Any] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Every operation the test's clients issued (one history for all its load
    #: generators and final reads), made on first use.
    history: History | None = None
    #: Faults being applied now (not yet noted): operations invoked meanwhile may or
    #: may not meet them, and say so.
    applying: list[str] = field(default_factory=list)
    #: (label, observation) of each BPF session that ended, for the evidence files.
    observations: list[tuple[str, Any]] = field(default_factory=list)
    #: (label, history) of earlier runs kept as evidence (a search's safety
    #: violation, proven by its run's history), besides the test's own.
    kept_histories: list[tuple[str, History]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.start, 4)

        requests = []
        for load in self.loads:
            for r in load.records():
                requests.append(
                    {
                        "flow": r.flow,
                        "t": rel(r.started),
                        "latency_ms": round(r.latency_s * 1000, 2),
                        "ok": r.ok,
                        "status": r.status,
                        "error": r.summary if r.status and r.status >= 400 else r.error,
                    }
                )
        requests.sort(key=lambda r: r["t"])
        faults = []
        for f in self.faults:
            start = getattr(f.handle, "applied_at", None) or f.start
            undone = getattr(f.handle, "undone_at", None) or f.end
            # The window ends when the fault was lifted; the undo's wait for the
            # target's health after that is drawn apart ("healthy").
            lifted = getattr(f.handle, "lifted_at", None) or undone
            healthy = (
                undone if undone is not None and lifted is not None and undone > lifted else None
            )
            faults.append(
                {"label": f.label, "kind": f.kind, "target": f.target, "start": rel(start),
                 "end": rel(lifted), "healthy": rel(healthy)}
            )  # fmt: skip
        return {
            "nodeid": self.nodeid,
            "started_at": self.start_wall,
            "faults": faults,
            "recoveries": [
                {**r, "start": rel(r["start"]), "end": rel(r["end"])} for r in self.recoveries
            ],
            "requests": requests,
            "events": sorted(({**e, "t": rel(e["t"])} for e in self.events), key=lambda e: e["t"]),
            "history": history_summary(self.history),
        }


_current: Timeline | None = None


def begin(nodeid: str) -> Timeline:
    global _current
    _current = Timeline(nodeid)
    return _current


def end() -> Timeline | None:
    global _current
    done, _current = _current, None
    return done


def restart() -> Timeline | None:
    """A new timeline for the same test (a schedule search's next run): what the
    report draws is the last run's."""
    global _current
    if _current is not None:
        _current = Timeline(_current.nodeid)
    return _current


def current() -> Timeline | None:
    return _current


def history() -> History | None:
    """The open timeline's history (made on first use), or None outside a test."""
    if _current is None:
        return None
    if _current.history is None:
        from .observe.history import History

        _current.history = History(faults=faults_in_force, started=_current.start)
    return _current.history


def history_summary(history: History | None) -> dict[str, Any] | None:
    """Per fault window, how many operations ended ok, fail and info and how slow the
    ok ones were (median and slowest), for the report; None without operations."""
    if history is None or not len(history):
        return None
    from .observe.history import windows

    rows: dict[str, dict[str, Any]] = {}
    latencies: dict[str, list[float]] = {}
    for name, op in windows(history.operations()):
        row = rows.setdefault(name, {"window": name, "ok": 0, "fail": 0, "info": 0})
        row[op.type] += 1
        if op.type == "ok" and op.latency is not None:
            latencies.setdefault(name, []).append(op.latency)
    for name, values in latencies.items():
        values.sort()
        rows[name]["ok_p50_ms"] = round(values[len(values) // 2] * 1000, 1)
        rows[name]["ok_max_ms"] = round(values[-1] * 1000, 1)
    return {"operations": len(history.operations()), "windows": list(rows.values())}


# -- what the pieces note -----------------------------------------------------------------


def note_fault(label: str, handle: Any) -> _Fault | None:
    if _current is None:
        return None
    fault = _Fault(
        label,
        str(getattr(handle, "kind", type(handle).__name__)),
        str(getattr(handle, "target", "")),
        time.monotonic(),
        handle,
    )
    _current.faults.append(fault)
    return fault


def note_load(load: Any) -> None:
    if _current is not None:
        _current.loads.append(load)


def note_recovery(what: str, start: float, end: float) -> None:
    if _current is not None:
        _current.recoveries.append(
            {"what": what, "start": start, "end": end, "seconds": round(end - start, 3)}
        )


def note_event(t: float, kind: str, label: str) -> None:
    if _current is not None:
        _current.events.append({"t": t, "kind": kind, "label": label})


def faults_in_force() -> tuple[str, ...]:
    """Labels of the open timeline's faults that are applied and not yet lifted, in
    the order they were applied, then ``applying <fault>`` for each being applied:
    what a history records on each event. A fault counts from the moment its
    application began until it was lifted, so an operation labelled with no fault
    met none."""
    if _current is None:
        return ()
    noted = [f.label for f in list(_current.faults) if _in_force(f)]
    return (*noted, *(f"applying {what}" for what in list(_current.applying)))


@dataclass
class Applying:
    """A fault being applied: what the history's events carry meanwhile
    (``applying <what> #n``, unique), and the fault's name once it is noted, which
    then replaces it in those events: an operation that met the fault while it was
    being applied met that fault, under one name."""

    token: str
    label: str | None = None


_applying_count = itertools.count(1)


@contextlib.contextmanager
def applying(what: str) -> Iterator[Applying]:
    """Around a fault's application, until it is noted on the timeline (the caller
    sets ``label`` to the name it was noted under)."""
    current = Applying(f"{what} #{next(_applying_count)}")
    if _current is None:
        yield current
        return
    timeline = _current
    timeline.applying.append(current.token)
    try:
        yield current
    finally:
        timeline.applying.remove(current.token)
        if current.label is not None and timeline.history is not None:
            timeline.history.rename_fault(f"applying {current.token}", current.label)


def _in_force(fault: _Fault) -> bool:
    """Noted once applied; in force until lifted (or, for a fault of the test's own
    without ``lifted_at``, until undone)."""
    return (getattr(fault.handle, "lifted_at", None) or fault.end) is None


def keep_history(label: str, history: History) -> None:
    """Keep an earlier run's history as evidence of the test (written beside its own)."""
    if _current is not None and all(h is not history for _, h in _current.kept_histories):
        _current.kept_histories.append((label, history))


def note_observation(label: str, observation: Any) -> None:
    if _current is not None:
        _current.observations.append((label, observation))
