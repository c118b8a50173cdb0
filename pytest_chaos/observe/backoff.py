"""Is there exponential backoff in a series of retry times, or a retry storm?

A retry storm is a series of attempts whose intervals do not grow: whatever their
spread (jitter), they are drawn alike, one after another. Exponential backoff makes
each interval about a factor larger than the one before, up to a cap. The judgement
needs two things, each proved from the intervals alone:

1. **They grow, beyond what chance gives a storm.** Kendall's S counts the pairs of
   intervals in increasing order less those in decreasing order. Among the orders a
   storm's intervals could come in, all equally likely, the share with an S at least
   as large is the p-value; it is exact (counted over every order) up to 30
   intervals, and the normal approximation beyond. It is taken over the first 5,
   10, 20, 40, 80, 160 intervals and over all of them (a long plateau at the cap
   would dilute a test of all of them), each at ``alpha`` divided by the number of
   windows, so a storm of any distribution is judged backoff at most ``alpha`` of
   the time (1% by default). This needs at least 5 intervals (6 attempts): fewer
   could not show growth at that risk even in perfect order, and are reported as
   too few to judge.
2. **By a factor.** The growing part runs up to where the intervals reach the level
   they keep (the cap); the growth factor is the Theil-Sen slope of the intervals'
   logarithms over that part (the median of every pair's slope, so one jittered
   interval moves it little). Backoff needs it to be at least ``min_growth`` (1.5):
   intervals that only creep up (linear backoff) are not exponential.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError

#: The risk that a retry storm is judged exponential backoff.
ALPHA = 0.01
#: The windows (first N intervals) the growth is tested over, besides all of them.
WINDOWS = (5, 10, 20, 40, 80, 160)
#: Up to this many intervals, the p-value is counted exactly over every order.
EXACT_UP_TO = 30


@dataclass(frozen=True)
class BackoffAnalysis:
    intervals: tuple[float, ...]
    #: Per-attempt growth of the intervals over the growing part (Theil-Sen).
    growth_factor: float | None
    #: The interval the last ones level off at, if they do.
    cap: float | None
    #: Spread of the successive ratios over the growing part (coefficient of
    #: variation): 0 without jitter.
    jitter: float | None
    #: The smallest p-value of the growth test, and the window (first N intervals)
    #: that gave it; None when there were too few intervals to test.
    p_value: float | None = None
    window: int | None = None
    #: The p-value the window had to reach (``alpha`` over the windows tested).
    threshold: float | None = None

    @property
    def grows(self) -> bool:
        """Whether the intervals grow beyond what a retry storm gives by chance."""
        return (
            self.p_value is not None
            and self.threshold is not None
            and self.p_value <= self.threshold
        )

    @property
    def decidable(self) -> bool:
        """Whether there were enough intervals to show growth at all."""
        return self.threshold is not None

    def exponential(self, min_growth: float = 1.5) -> bool:
        return self.grows and self.growth_factor is not None and self.growth_factor >= min_growth

    def describe(self) -> str:
        shown = ", ".join(f"{i:.3f}" for i in self.intervals[:20])
        more = " ..." if len(self.intervals) > 20 else ""
        growth = f"{self.growth_factor:.2f}" if self.growth_factor is not None else "n/a"
        cap = f"{self.cap:.3f} s" if self.cap is not None else "none"
        test = "not testable"
        if self.p_value is not None and self.threshold is not None:
            test = (
                f"growth over the first {self.window} intervals p={self.p_value:.2g} "
                f"(needs <= {self.threshold:.2g})"
            )
        return f"intervals {shown}{more} s; {test}; growth x{growth}; cap {cap}"


def min_intervals(alpha: float = ALPHA) -> int:
    """The fewest intervals whose perfect increasing order could show growth at
    ``alpha`` (one in N! orders is the perfect one)."""
    n = 2
    while 1 / math.factorial(n) > alpha:
        n += 1
    return n


def analyze_backoff(
    times: Sequence[float], *, alpha: float = ALPHA, plateau: float = 0.5
) -> BackoffAnalysis:
    """Analyse attempt ``times`` (seconds, any clock); see the module's docstring.
    ``plateau``: intervals within that fraction of the largest one after them count
    as levelled off at the cap."""
    if not 0 < alpha < 1:
        raise ConfigurationError(f"alpha is a probability between 0 and 1, not {alpha!r}.")
    ordered = sorted(float(t) for t in times)
    intervals = tuple(b - a for a, b in itertools.pairwise(ordered))
    if len(intervals) < 2:
        return BackoffAnalysis(intervals, None, None, None)
    p_value, window, threshold = _growth_test(intervals, alpha)
    end = _cap_start(intervals, plateau)
    rising = intervals[: end + 1]
    growth = _theil_sen_growth(rising)
    tail = intervals[end:]
    # Three or more intervals within the plateau: levelled off (two could be the last
    # steps of a backoff that never capped).
    cap = max(tail) if len(tail) >= 3 else None
    ratios = [b / a for a, b in itertools.pairwise(rising) if a > 0]
    jitter = None
    if len(ratios) >= 2:
        mean = statistics.fmean(ratios)
        jitter = statistics.pstdev(ratios) / mean if mean else None
    return BackoffAnalysis(intervals, growth, cap, jitter, p_value, window, threshold)


def _growth_test(
    intervals: Sequence[float], alpha: float
) -> tuple[float | None, int | None, float | None]:
    """(smallest p-value, its window, the threshold) over the windows that fit."""
    n = len(intervals)
    if n < min_intervals(alpha):
        return None, None, None
    windows = sorted({w for w in WINDOWS if w <= n} | {n})
    threshold = alpha / len(windows)
    best = min(((trend_p_value(intervals[:w]), w) for w in windows), key=lambda pw: pw[0])
    return best[0], best[1], threshold


def _cap_start(intervals: Sequence[float], plateau: float) -> int:
    """Where the intervals level off: the first that is within ``plateau`` of the
    largest one from there on (the last interval when none is)."""
    top_from = list(itertools.accumulate(reversed(intervals), max))[::-1]
    for i, (value, top) in enumerate(zip(intervals, top_from, strict=True)):
        if value >= top * (1 - plateau):
            return i
    return len(intervals) - 1  # pragma: no cover - the last one is its own top


def _theil_sen_growth(values: Sequence[float]) -> float | None:
    """exp of the median slope of log(value) over every pair (None under 3 values)."""
    logs = [(i, math.log(v)) for i, v in enumerate(values) if v > 0]
    if len(logs) < 3:
        return None
    slopes = [(b - a) / (j - i) for (i, a), (j, b) in itertools.combinations(logs, 2)]
    return math.exp(statistics.median(slopes))


def kendall_s(values: Sequence[float]) -> int:
    """Pairs in increasing order less pairs in decreasing order (ties count neither)."""
    return sum((b > a) - (b < a) for i, a in enumerate(values) for b in values[i + 1 :])


def trend_p_value(values: Sequence[float]) -> float:
    """The share of the orders of ``values`` whose Kendall S is at least theirs: how
    often a series drawn alike, one after another, looks at least this increasing."""
    n = len(values)
    s = kendall_s(values)
    pairs = n * (n - 1) // 2
    if n <= EXACT_UP_TO:
        # S = pairs - 2 * inversions: count the orders with at most that many.
        inversions = (pairs - s) // 2 if (pairs - s) % 2 == 0 else (pairs - s - 1) // 2
        counts = _orders_by_inversions(n)
        return sum(counts[: inversions + 1]) / math.factorial(n)
    variance = n * (n - 1) * (2 * n + 5) / 18
    z = (s - 1) / math.sqrt(variance)  # with continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


@functools.cache
def _orders_by_inversions(n: int) -> tuple[int, ...]:
    """How many orders of n distinct values have 0, 1, 2, ... inversions (the
    Mahonian numbers), by adding one value at a time."""
    counts = [1]
    for k in range(1, n):
        # The k-th value added can make 0..k new inversions.
        widened = [0] * (len(counts) + k)
        for inv, c in enumerate(counts):
            for extra in range(k + 1):
                widened[inv + extra] += c
        counts = widened
    return tuple(counts)


def assert_backoff(
    times: Sequence[float],
    *,
    min_attempts: int = 3,
    min_growth: float = 1.5,
    alpha: float = ALPHA,
    what: str = "connect attempts",
) -> BackoffAnalysis:
    """Fail unless the attempts back off exponentially (see the module's docstring);
    the message shows the intervals, so a retry storm reads as one, and says when
    there were too few attempts to tell."""
    if min_attempts < 3:
        raise ConfigurationError("backoff needs at least 3 attempts to show growth.")
    analysis = analyze_backoff(times, alpha=alpha)
    needed = max(min_attempts, min_intervals(alpha) + 1)
    if len(times) < needed:
        raise AssertionError(
            f"only {len(times)} {what}: at least {needed} are needed to tell exponential "
            f"backoff from a retry storm at a {alpha:.0%} risk; " + analysis.describe()
        )
    if not analysis.exponential(min_growth):
        why = (
            "they do not grow beyond what chance gives a retry storm"
            if not analysis.grows
            else f"they grow by less than x{min_growth:g} per attempt"
        )
        raise AssertionError(
            f"no exponential backoff in {len(times)} {what} ({why}): {analysis.describe()}"
        )
    return analysis
