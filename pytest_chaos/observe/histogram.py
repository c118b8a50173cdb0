"""Histograms as BPF programs count them (log2 buckets, or linear buckets of a
fixed width), with percentiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigurationError


@dataclass(frozen=True)
class Histogram:
    """Counts per bucket. By default power-of-two buckets: bucket ``k`` holds values
    in [2**k, 2**(k+1)) (bucket 0 also holds 0). With a ``width``, linear buckets:
    bucket ``k`` holds values in [k * width, (k + 1) * width). ``unit`` names what
    the values measure (e.g. "us")."""

    buckets: Mapping[int, int] = field(default_factory=dict)
    unit: str = "us"
    width: float = 0.0

    def __post_init__(self) -> None:
        for slot, count in self.buckets.items():
            if slot < 0 or count < 0:
                raise ConfigurationError(f"bad histogram bucket {slot}: {count}")
        if self.width < 0:
            raise ConfigurationError(f"a bucket width is positive, not {self.width!r}.")

    def _bounds(self, slot: int) -> tuple[float, float]:
        if self.width:
            return slot * self.width, (slot + 1) * self.width
        return (0.0 if slot == 0 else float(2**slot)), float(2 ** (slot + 1))

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def percentile(self, p: float) -> float:
        """The value below which ``p`` percent of the samples fall, interpolated
        linearly inside its bucket. 0 for an empty histogram."""
        if not 0 <= p <= 100:
            raise ConfigurationError(f"a percentile is between 0 and 100, not {p!r}.")
        total = self.count
        if total == 0:
            return 0.0
        rank = p / 100.0 * total
        seen = 0
        for slot in sorted(self.buckets):
            count = self.buckets[slot]
            if count == 0:
                continue
            low, high = self._bounds(slot)
            if seen + count >= rank:
                inside = (rank - seen) / count
                return low + inside * (high - low)
            seen += count
        return self._bounds(max(self.buckets))[1]

    def figures(self, prefix: str) -> dict[str, float | int]:
        digits = 2 if self.width else 1
        return {
            f"{prefix}_count": self.count,
            f"{prefix}_p50_{self.unit}": round(self.percentile(50), digits),
            f"{prefix}_p95_{self.unit}": round(self.percentile(95), digits),
            f"{prefix}_p99_{self.unit}": round(self.percentile(99), digits),
        }
