"""Parsers and validators for the values users pass to faults: durations and
signals. They raise ConfigurationError with a message that shows an accepted form."""

from __future__ import annotations

import math
import re
import signal as _signal

from .errors import ConfigurationError
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: float | int | str, *, name: str = "duration") -> float:
    """Seconds from ``1.5``, ``"1.5"``, ``"250ms"``, ``"2s"``, ``"1m"``; must be > 0."""
    if isinstance(value, bool):
        raise ConfigurationError(
            f"{name} must be a duration such as 2, '250ms' or '1m', not {value!r}."
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ConfigurationError(
                f"{name} {value!r} is not a duration: use a number of seconds or a number "
                "with a unit (ms, s, m, h), e.g. '250ms' or '30s'."
            )
        seconds = float(match.group(1)) * _SCALE[match.group(2)]
    else:
        raise ConfigurationError(
            f"{name} must be a number or a string such as '30s', not {type(value).__name__}."
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{name} must be positive and finite, got {value!r}.")
    return seconds


def parse_signal(value: int | str | _signal.Signals) -> _signal.Signals:
    """A signal from ``signal.SIGKILL``, ``9``, ``"SIGKILL"`` or ``"kill"``."""
    if isinstance(value, _signal.Signals):
        return value
    if isinstance(value, bool):
        raise ConfigurationError(
            f"signal must be a name such as 'SIGKILL' or a number, not {value!r}."
        )
    if isinstance(value, int):
        try:
            return _signal.Signals(value)
        except ValueError:
            raise ConfigurationError(f"{value} is not a signal number on this system.") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return _signal.Signals[name]
        except KeyError:
            raise ConfigurationError(
                f"{value!r} is not a signal name; "
                "use one such as 'SIGKILL', 'SIGTERM' or 'SIGSTOP'."
            ) from None
    raise ConfigurationError(f"signal must be a name or a number, not {type(value).__name__}.")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: int | str, *, name: str = "size") -> int:
    """Bytes from ``268435456``, ``"256m"``, ``"256MiB"``, ``"1g"`` (powers of 1024,
    as Docker reads them); must be positive."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a size such as '256m', not {value!r}.")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ConfigurationError(
                f"{name} {value!r} is not a size: use bytes or a number with k, m, g "
                "(powers of 1024), e.g. '256m' or '1g'."
            )
        size = int(float(match.group(1)) * _SIZE_SCALE[match.group(2).lower()])
    else:
        raise ConfigurationError(
            f"{name} must be a size such as '256m', not {type(value).__name__}."
        )
    if size <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}.")
    return size
