"""A bandwidth limit on what a service sends: a tbf root qdisc on its interface, set
through netlink (pyroute2)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault
from ..units import parse_duration
from .base import Effect, FaultHandle
from .qdisc import qdisc_session, qdisc_stats, root_major, root_qdisc_fault

if TYPE_CHECKING:
    from ..chaos import Chaos
    from ..targets.compose import Service

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$", re.I)
_RATE_SCALE = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}


@dataclass
class BandwidthHandle(FaultHandle):
    rate_bps: int = 0
    interface: str = "eth0"
    _pid: int = 0

    def measure_effect(self) -> Effect:
        with qdisc_session(self._pid, self.target, self.interface) as (ipr, index):
            stats = qdisc_stats(ipr, index, "tbf")
        return Effect(
            stats["overlimits"] > 0,
            f"{stats['packets']} packets through the limiter, "
            f"{stats['overlimits']} held back over the rate",
        )

    def describe(self) -> str:
        return f"bandwidth {self.target} {self.rate_bps} bit/s on {self.interface}"

    def figures(self) -> dict[str, float | int | str]:
        return {**super().figures(), "rate_bps": self.rate_bps, "interface": self.interface}


def parse_rate(rate: str | int) -> int:
    """Bits per second from ``1000000``, ``"1mbit"``, ``"512kbit"`` or ``"1mbps"``
    (bytes, tc's spelling)."""
    if isinstance(rate, bool):
        raise ConfigurationError(f"rate must be such as '1mbit', not {rate!r}.")
    if isinstance(rate, int):
        bits = float(rate)
    else:
        match = _RATE.match(str(rate))
        if not match:
            raise ConfigurationError(
                f"rate {rate!r} is not a rate: use a number with a unit such as '1mbit', "
                "'512kbit' or '10mbps' (bytes)."
            )
        bits = float(match.group(1)) * _RATE_SCALE[match.group(2).lower()]
    if not 8 * 1024 <= bits <= 100e9:
        raise ConfigurationError(f"rate must be between 8kbit and 100gbit, got {rate!r}.")
    return int(bits)


@contextmanager
def bandwidth(
    service: Service,
    rate: str | int,
    *,
    burst: int = 32 * 1024,
    latency: float | str = "400ms",
    interface: str = "eth0",
) -> Iterator[BandwidthHandle]:
    """Limit what ``service`` sends on ``interface`` to ``rate`` (a tbf root qdisc).
    Refuses to replace a root qdisc someone else set; undo restores the default."""
    bits = parse_rate(rate)
    latency_s = parse_duration(latency, name="latency")
    if burst < 1600:
        raise ConfigurationError(f"burst must be at least one packet (1600 bytes), got {burst}.")
    handle = BandwidthHandle(
        kind="bandwidth", target=service.label, rate_bps=bits, interface=interface
    )
    handle._pid = service.init_pid()
    with root_qdisc_fault(service, interface, handle.describe(), handle) as (ipr, index):
        ipr.tc(
            "add",
            "tbf",
            index,
            handle=f"{root_major(service):x}:",
            rate=f"{bits}bit",
            burst=burst,
            latency=int(latency_s * 1e6),
        )
        handle.applied_at = time.monotonic()
        yield handle
    handle.undone_at = time.monotonic()


@fault(
    "bandwidth",
    grid={"rate": ("10mbit", "1mbit", "100kbit")},
    journal=("qdisc",),
    leaves=("qdisc",),
    requires=("root", "this-kernel"),
    example="chaos.bandwidth({service}, '10mbit')",
)
def _chaos_bandwidth(
    chaos: Chaos, service: str, rate: str | int, **options: Any
) -> AbstractContextManager[BandwidthHandle]:
    """Limit what ``service`` sends to ``rate`` (e.g. '1mbit'): a tbf root qdisc on
    its interface, through netlink. Undo: the default qdisc is back."""
    parse_rate(rate)
    return bandwidth(chaos.service(service), rate, **options)
