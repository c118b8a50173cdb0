"""Interruptions: SIGTERM turned into the same interruption as Ctrl-C, so that every
fault's undo runs (teardown's third layer), and which signal it was and when. (What
an interruption then does: ``interruption.py``.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: (signal name, time.monotonic()) of the interruption received, if any.
received: tuple[str, float] | None = None


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
