"""Waiting for a steady state with a deadline, and measuring how long it took."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .. import timeline
from ..errors import ConfigurationError, RecoveryTimeout
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..units import parse_duration


class _Lifted(Protocol):
    """A fault's handle, as ``since`` takes it (observe does not import the faults)."""

    lifted_at: float | None
    undone_at: float | None

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Recovery:
    """How a wait for a steady state ended."""

    #: Seconds from ``since`` (the fault's start, by default the call) to the first
    #: passing check.
    recovery_time_s: float
    #: Seconds this call spent waiting.
    waited_s: float
    #: Checks made, the passing one included.
    checks: int


def wait_for_recovery(
    check: Callable[[], object],
    *,
    timeout: float | str = 60.0,
    interval: float | str = 0.1,
    since: float | _Lifted | None = None,
    what: str = "steady state",
    transient: tuple[type[BaseException], ...] = (Exception,),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_timeline: bool = True,
) -> Recovery:
    """Call ``check`` every ``interval`` until it returns a truthy value.

    ``since`` is a ``clock()`` reading (e.g. the moment a fault was injected), or a
    fault's handle: then the moment the fault was lifted (``handle.lifted_at``), not
    when its undo finished waiting for the target's health. The recovery time is
    measured from it, and the deadline is ``since + timeout``.
    Exceptions of the ``transient`` types count as a failed check. On timeout,
    :class:`RecoveryTimeout` says what the last check returned or raised. The recovery
    is marked on the test's timeline (HTML report) unless ``on_timeline`` is False.
    """
    timeout_s = parse_duration(timeout, name="timeout")
    interval_s = parse_duration(interval, name="interval")
    start = clock()
    if since is not None and not isinstance(since, int | float):
        lifted = since.lifted_at if since.lifted_at is not None else since.undone_at
        if lifted is None:
            raise ConfigurationError(
                f"since={since.describe()!r}: that fault is still in force; undo it "
                "first (chaos.undo(handle, wait=False) lifts it at once)."
            )
        since = lifted
    origin = start if since is None else since
    if origin > start:
        raise ConfigurationError("since lies in the future: pass a reading of the same clock.")
    deadline = origin + timeout_s
    checks = 0
    last: str = "no check completed"
    while True:
        checks += 1
        try:
            result = check()
        except transient as exc:
            last = f"raised {type(exc).__name__}: {exc}"
        else:
            if result:
                now = clock()
                if on_timeline and clock is time.monotonic:
                    timeline.note_recovery(what, origin, now)
                return Recovery(recovery_time_s=now - origin, waited_s=now - start, checks=checks)
            last = f"returned {result!r}"
        now = clock()
        if now >= deadline:
            raise RecoveryTimeout(
                f"{what} did not return within {timeout_s:g} s "
                f"({checks} checks); the last check {last}."
            )
        sleep(min(interval_s, max(0.0, deadline - now)))
