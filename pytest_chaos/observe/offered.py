"""Offered against achieved load, per fault window: how many requests a load
generator was due to send (its open-loop schedule) and how many it sent, in each
stretch of time with the same faults in force. A generator that holds requests back
(``max_in_flight`` pending) sends less than it offers exactly when the system is
slowest; latency figures from the sent requests alone then flatter the system
(coordinated omission), and these figures say by how much.

Windows are cut by time, at every fault's application and lifting: ``before`` the
first fault, ``during1``, ``during2``... (each set of faults in force, numbered in
the order first in force; ``faults`` names them), ``between`` faults and ``after``
the last. A request belongs to the window its due time falls in."""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Slot:
    """One request of a flow's schedule: when it was due, and whether it was sent."""

    flow: str
    due: float
    sent: bool


@dataclass(frozen=True)
class FaultSpan:
    """A fault in force from ``start`` until ``end`` (None: until the load stopped)."""

    label: str
    start: float
    end: float | None


@dataclass(frozen=True)
class RateWindow:
    """One flow's load in one fault window."""

    name: str
    flow: str
    #: The faults in force (" + "-joined, in order applied); "" outside faults.
    faults: str
    seconds: float
    offered: int
    sent: int

    @property
    def offered_per_s(self) -> float:
        return self.offered / self.seconds if self.seconds > 0 else 0.0

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def not_sent(self) -> int:
        return self.offered - self.sent


def rate_windows(
    slots: Iterable[Slot], faults: Sequence[FaultSpan], start: float, stop: float
) -> list[RateWindow]:
    """Per flow and fault window, in time order of the windows' first stretch: the
    seconds the window lasted within [start, stop], the requests due in it and those
    sent. ``faults`` are in the order they were applied."""
    cuts = sorted(
        {start, stop}
        | {t for f in faults for t in (f.start, f.end) if t is not None and start < t < stop}
    )
    segments = list(itertools.pairwise(cuts)) or [(start, stop)]
    in_force = [
        tuple(
            dict.fromkeys(f.label for f in faults if f.start <= a and (f.end is None or a < f.end))
        )
        for a, _ in segments
    ]
    faulted = [i for i, labels in enumerate(in_force) if labels]
    first, last = (faulted[0], faulted[-1]) if faulted else (math.inf, -math.inf)
    names: list[str] = []
    numbered: dict[tuple[str, ...], str] = {}
    for i, labels in enumerate(in_force):
        if labels:
            key = tuple(sorted(labels))
            names.append(numbered.setdefault(key, f"during{len(numbered) + 1}"))
        elif i < first:
            names.append("before")
        elif i > last:
            names.append("after")
        else:
            names.append("between")
    faults_of = {name: " + ".join(labels) for name, labels in zip(names, in_force, strict=True)}
    seconds: dict[str, float] = {}
    for name, (a, b) in zip(names, segments, strict=True):
        seconds[name] = seconds.get(name, 0.0) + (b - a)
    starts = [a for a, _ in segments]
    counts: dict[tuple[str, str], list[int]] = {}
    for slot in slots:
        i = min(max(bisect.bisect_right(starts, slot.due) - 1, 0), len(segments) - 1)
        tally = counts.setdefault((slot.flow, names[i]), [0, 0])
        tally[0] += 1
        tally[1] += slot.sent
    order = list(dict.fromkeys(names))
    flows = list(dict.fromkeys(flow for flow, _ in counts))
    return [
        RateWindow(
            name,
            flow,
            faults_of[name],
            round(seconds[name], 6),
            *counts.get((flow, name), (0, 0)),
        )
        for flow in flows
        for name in order
    ]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by nearest rank: a value that occurred,
    so a request never answered (``math.inf``) stays one and is never averaged
    into a finite figure."""
    if not values:
        raise ValueError("no values to take a percentile of")
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], not {q!r}")
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def load_figures(loads: Sequence[Any], faults: Sequence[FaultSpan]) -> dict[str, float | int | str]:
    """The figures of a test's load generators: per flow the requests offered and
    those held back; per flow and window the rate offered and the rate sent; what
    each ``duringN`` was. Flows of the same name in several generators count as one."""
    slots = [slot for load in loads for slot in load.slots()]
    if not slots:
        return {}
    starts = [load.started_at for load in loads if load.started_at is not None]
    stops = [load.stopped_at for load in loads if load.stopped_at is not None]
    start = min(starts, default=slots[0].due)
    stop = max([*stops, *(s.due for s in slots)], default=start)
    out: dict[str, float | int | str] = {}
    for flow in dict.fromkeys(s.flow for s in slots):
        mine = [s for s in slots if s.flow == flow]
        key = _figure_name(flow)
        out[f"load_{key}_offered"] = len(mine)
        out[f"load_{key}_not_sent"] = sum(not s.sent for s in mine)
    for window in rate_windows(slots, faults, start, stop):
        if window.faults:
            out[f"load_{window.name}_faults"] = window.faults
        prefix = f"load_{_figure_name(window.flow)}_{window.name}"
        out[f"{prefix}_offered_per_s"] = round(window.offered_per_s, 2)
        out[f"{prefix}_sent_per_s"] = round(window.sent_per_s, 2)
    return out


def _figure_name(flow: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", flow.lower()).strip("_") or "flow"
