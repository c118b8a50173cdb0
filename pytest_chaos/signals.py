"""SIGTERM turned into the same interruption as Ctrl-C, so that every fault's undo
runs (teardown's third layer)."""

from __future__ import annotations

import os
import signal
import threading


def sigterm_interrupts() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so fixtures' finalizers (and with them
    every undo) run as they do after Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            # A child forked by some library inherited this handler: it must die as
            # a child would, not unwind pytest (and run its finalizers) a second time.
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"pytest-chaos: received signal {signum}; undoing faults")

    signal.signal(signal.SIGTERM, interrupt)
