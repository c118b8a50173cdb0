"""Waits for health put off while faults are lifted. An interruption lifts every fault
first and waits for the targets' health afterwards (a health check may take seconds;
a partition must not wait for it); a schedule's step, or ``chaos.undo(wait=False)``,
lifts its fault and waits beside the test. Whoever lifts hands a :class:`PutOff` to
the fault's undo through its handle (``FaultHandle.put_off``), never through a global,
and does the waits it collected once it chooses."""

from __future__ import annotations

import threading
from collections.abc import Callable

Wait = Callable[[], str]


class PutOff:
    """The waits for health that undos put off, to be done "after ``after``" (the
    interruption, its step, the undo of a fault): each wait says what it found."""

    def __init__(self, after: str) -> None:
        self.after = after
        self._waits: list[Wait] = []
        self._lock = threading.Lock()

    def defer(self, wait: Wait) -> str:
        """Put ``wait`` off; what the undo reports meanwhile."""
        with self._lock:
            self._waits.append(wait)
        return f"awaited after {self.after}"

    def take(self) -> list[Wait]:
        """The waits put off so far, for the caller to do (no longer held here)."""
        with self._lock:
            taken, self._waits = self._waits, []
        return taken

    def run(self) -> list[str]:
        """Do the waits put off, in order; one line each (or the error it met)."""
        done = []
        for wait in self.take():
            try:
                done.append(wait())
            except Exception as exc:  # noqa: BLE001 - reported; the run is ending anyway
                done.append(f"{type(exc).__name__}: {exc}")
        return done
