"""Interruptions: SIGTERM turned into the same interruption as Ctrl-C, so that every
fault's undo runs (teardown's third layer); which signal it was and when; and, while
an interruption lifts the faults, the waits for health put off until every fault is
lifted (a service's health check may take seconds; a partition must not wait for it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

#: (signal name, time.monotonic()) of the interruption received, if any.
received: tuple[str, float] | None = None

_lifting = False
_deferred: list[Callable[[], str]] = []


def interrupts() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so fixtures' finalizers (and with them
    every undo) run as they do after Ctrl-C, and note which signal came when (for
    SIGINT too, where its handler is still Python's own)."""
    global received
    if threading.current_thread() is not threading.main_thread():
        return
    received = None
    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        global received
        if os.getpid() != owner:
            # A child forked by some library inherited this handler: it must die as
            # a child would, not unwind pytest (and run its finalizers) a second time.
            os._exit(128 + signum)
        if received is None:
            received = (signal.Signals(signum).name, time.monotonic())
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise KeyboardInterrupt(f"pytest-chaos: received signal {signum}; undoing faults")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


@contextlib.contextmanager
def lifting_only() -> Iterator[None]:
    """While in this block, undos lift their fault and put off any wait for health
    (:func:`defer`); :func:`run_deferred` does those waits afterwards."""
    global _lifting
    _lifting = True
    try:
        yield
    finally:
        _lifting = False


def lifting() -> bool:
    """Whether an interruption is lifting faults (waits for health are put off)."""
    return _lifting


def defer(wait: Callable[[], str]) -> None:
    """Put off a wait for health until every fault is lifted; ``wait`` says what
    it found."""
    _deferred.append(wait)


def run_deferred() -> list[str]:
    """Do the waits put off, in order; one line each (or the error it met)."""
    done = []
    while _deferred:
        wait = _deferred.pop(0)
        try:
            done.append(wait())
        except Exception as exc:  # noqa: BLE001 - reported; the run is ending anyway
            done.append(f"{type(exc).__name__}: {exc}")
    return done
