"""Is there exponential backoff in a series of retry times? Intervals between
attempts, their growth factor, the cap they level off at, and how much jitter
spreads them; and an assertion that shows the intervals when there is none (a
retry storm)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError


@dataclass(frozen=True)
class BackoffAnalysis:
    intervals: tuple[float, ...]
    #: Median ratio of each interval to the one before it, over the growing part.
    growth_factor: float | None
    #: The interval the last ones level off at, if they do.
    cap: float | None
    #: Spread of the growth ratios (coefficient of variation): 0 without jitter.
    jitter: float | None

    def exponential(self, min_growth: float = 1.5) -> bool:
        return self.growth_factor is not None and self.growth_factor >= min_growth

    def describe(self) -> str:
        shown = ", ".join(f"{i:.3f}" for i in self.intervals[:20])
        more = " ..." if len(self.intervals) > 20 else ""
        growth = f"{self.growth_factor:.2f}" if self.growth_factor is not None else "n/a"
        cap = f"{self.cap:.3f} s" if self.cap is not None else "none"
        return f"intervals {shown}{more} s; growth x{growth}; cap {cap}"


def analyze_backoff(times: Sequence[float], *, plateau: float = 0.5) -> BackoffAnalysis:
    """Analyse attempt ``times`` (seconds, any clock). The growing part ends where an
    interval is no longer larger than the one before; if the intervals after that stay
    within ``plateau`` of their largest, that largest is the cap."""
    ordered = sorted(float(t) for t in times)
    intervals = tuple(b - a for a, b in itertools.pairwise(ordered))
    if len(intervals) < 2:
        return BackoffAnalysis(intervals, None, None, None)
    ratios = [b / a for a, b in itertools.pairwise(intervals) if a > 0]
    growing: list[float] = []
    for ratio in ratios:
        if ratio <= 1.0 and growing:
            break
        growing.append(ratio)
    growth = statistics.median(growing) if growing else None
    tail = intervals[len(growing) :]
    cap = None
    if len(tail) >= 2:
        top = max(tail)
        if all(t >= top * (1 - plateau) for t in tail):
            cap = top
    jitter = None
    if len(growing) >= 2:
        mean = statistics.fmean(growing)
        jitter = statistics.pstdev(growing) / mean if mean else None
    return BackoffAnalysis(intervals, growth, cap, jitter)


def assert_backoff(
    times: Sequence[float],
    *,
    min_attempts: int = 3,
    min_growth: float = 1.5,
    what: str = "connect attempts",
) -> BackoffAnalysis:
    """Fail unless the attempts back off exponentially; the message shows the
    intervals, so a retry storm reads as one."""
    if min_attempts < 3:
        raise ConfigurationError("backoff needs at least 3 attempts to show growth.")
    analysis = analyze_backoff(times)
    if len(times) < min_attempts:
        raise AssertionError(
            f"only {len(times)} {what} (at least {min_attempts} are needed to judge backoff); "
            + analysis.describe()
        )
    if not analysis.exponential(min_growth):
        raise AssertionError(
            f"no exponential backoff in {len(times)} {what} (growth below x{min_growth:g}, "
            f"a retry storm): {analysis.describe()}"
        )
    return analysis
