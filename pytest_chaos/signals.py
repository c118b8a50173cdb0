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

# Per thread: a schedule's health waits run in threads of their own, which must wait
# for real while the main thread lifts the next fault.
_state = threading.local()
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
def lifting_only(after: str = "the interruption") -> Iterator[None]:
    """While in this block (in this thread), undos lift their fault and put off any
    wait for health (:func:`defer`), saying it is "awaited after ``after``";
    :func:`run_deferred` (or whoever :func:`take_deferred`) does those waits."""
    before = getattr(_state, "after", None)
    _state.after = after
    try:
        yield
    finally:
        _state.after = before


def lifting() -> bool:
    """Whether this thread is lifting faults with waits for health put off."""
    return getattr(_state, "after", None) is not None


def lifted_after() -> str:
    """What the waits put off now are awaited after (see :func:`lifting_only`)."""
    return str(getattr(_state, "after", None) or "the interruption")


def defer(wait: Callable[[], str]) -> None:
    """Put off a wait for health until every fault is lifted; ``wait`` says what
    it found."""
    _deferred.append(wait)


def take_deferred() -> list[Callable[[], str]]:
    """The waits put off so far, for the caller to do (no longer pending here)."""
    taken = list(_deferred)
    del _deferred[: len(taken)]
    return taken


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
