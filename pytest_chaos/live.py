"""The live line: while a fault is in force, a line every few seconds says what is
injected, for how long, and how the requests are doing, so a long experiment never
looks frozen (on a terminal and in a CI log alike)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from . import timeline


def status_line(faults: list[tuple[str, float]], loads: list[Any], now: float) -> str:
    """``faults``: (label, applied_at) of the faults in force."""
    parts = [f"{label} for {now - since:.1f} s" for label, since in faults]
    line = "chaos: " + "; ".join(parts)
    if loads:
        records = [r for load in loads for r in load.records()]
        failed = sum(not r.ok for r in records)
        line += f" | requests {len(records)} done, {failed} failed"
        waiting = [t for load in loads for t in load.in_flight()]
        if waiting:
            # Hung requests show here: they are neither done nor failed yet.
            line += f", {len(waiting)} in flight (oldest {now - min(waiting):.1f} s)"
        held = sum(len(load.not_sent()) for load in loads if hasattr(load, "not_sent"))
        if held:
            line += f", {held} held back (max_in_flight)"
        recent = [r for r in records if r.started >= now - 2.0]
        if recent:
            line += f", {sum(not r.ok for r in recent)} of {len(recent)} in the last 2 s"
    return line


class LiveLine:
    """A daemon thread writing :func:`status_line` every ``interval`` seconds while
    the watched chaos session has faults in force."""

    def __init__(self, write: Callable[[str], None], interval: float) -> None:
        self._write = write
        self._interval = interval
        self._session: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, session: Any) -> None:
        self._session = session
        if self._thread is None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="chaos-live", daemon=True)
            self._thread.start()

    def unwatch(self) -> None:
        self._session = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def _run(self) -> None:
        shown: set[int] = set()
        while not self._stop.wait(self._interval):
            session = self._session
            if session is None:
                shown.clear()
                continue
            # A status line must never break a run.
            with contextlib.suppress(Exception):
                for line in self._lines(session, shown):
                    self._write(line)

    def _lines(self, session: Any, shown: set[int]) -> list[str]:
        """A line for each fault that came and went since the last tick without one
        (shorter than the interval), then the status line of those in force."""
        lines = []
        spans = session.spans() if hasattr(session, "spans") else []
        for key, label, applied, lifted in spans:
            if key in shown:
                continue
            shown.add(key)
            if lifted is not None:
                lines.append(f"chaos: {label} was in force for {lifted - applied:.1f} s, lifted")
        faults = session.in_force()
        if faults:
            current = timeline.current()
            loads = list(current.loads) if current is not None else []
            lines.append(status_line(faults, loads, time.monotonic()))
        return lines
