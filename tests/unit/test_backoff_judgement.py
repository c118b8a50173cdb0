"""The backoff judgement against generated attempts whose right answer is known: real
backoffs (with and without jitter, with a cap) must be judged exponential; retry
storms (their intervals drawn alike, in any order an adversary likes where the
answer is certain) must not; too few attempts must be said to be too few."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_chaos.observe.backoff import (
    ALPHA,
    analyze_backoff,
    assert_backoff,
    kendall_s,
    min_intervals,
    trend_p_value,
)


def times_of(intervals):
    return [0.0, *itertools.accumulate(intervals)]


def backoff(rng, count, *, base, factor, cap, jitter, full=False):
    """``count`` intervals of capped exponential backoff: delay d = min(cap, base *
    factor**k), drawn from [d * (1 - jitter), d] (equal jitter), or from [0, d] (full
    jitter)."""
    out = []
    for k in range(count):
        d = min(cap, base * factor**k)
        out.append(d * rng.random() if full else d * (1 - jitter * rng.random()))
    return out


def storm(rng, count, family):
    """``count`` intervals drawn alike, one after another."""
    if family.startswith("band"):
        width = float(family[4:])
        low = rng.uniform(0.005, 0.2 / width)
        return [rng.uniform(low, low * width) for _ in range(count)]
    if family == "exponential":
        return [rng.expovariate(30.0) for _ in range(count)]
    return [math.exp(rng.gauss(-3.5, 1.0)) for _ in range(count)]  # lognormal


@given(
    base=st.floats(0.001, 1.0),
    factor=st.floats(1.6, 4.0),
    count=st.integers(6, 60),
    capped=st.booleans(),
)
def test_backoff_without_jitter_is_judged_exponential_with_its_exact_factor(
    base, factor, count, capped
):
    # Capped after 6 growing intervals, or never.
    cap = base * factor**6 if capped else math.inf
    intervals = backoff(random.Random(0), count, base=base, factor=factor, cap=cap, jitter=0.0)
    analysis = analyze_backoff(times_of(intervals))
    assert analysis.exponential(1.5), analysis.describe()
    assert analysis.growth_factor == pytest.approx(factor, rel=1e-6)
    if capped and count > 8:
        assert analysis.cap == pytest.approx(cap)


@given(
    seed=st.integers(0, 2**32),
    factor=st.floats(2.0, 4.0),
    jitter=st.floats(0.0, 0.5),
    growing=st.integers(6, 12),
    plateau=st.integers(0, 150),
)
def test_backoff_with_equal_jitter_and_a_cap_is_judged_exponential(
    seed, factor, jitter, growing, plateau
):
    """Doubling (or more) with up to 50% jitter: each interval is at least the one
    before, so six growing intervals prove growth whatever the plateau after them."""
    rng = random.Random(seed)
    cap = 0.02 * factor**growing
    intervals = backoff(rng, growing + plateau, base=0.02, factor=factor, cap=cap, jitter=jitter)
    analysis = assert_backoff(times_of(intervals))
    assert analysis.growth_factor >= 1.5


@settings(max_examples=300)
@given(
    intervals=st.lists(st.floats(1.0, 1.499), min_size=2, max_size=200),
    scale=st.floats(0.001, 1.0),
    order=st.sampled_from(["as drawn", "ascending", "rising once", "rising then flat"]),
)
def test_a_storm_within_a_band_narrower_than_the_growth_is_never_backoff(intervals, scale, order):
    """Intervals within a band narrower than x1.5 cannot grow by x1.5 per attempt,
    in whatever order: sorted ascending (a perfect trend), rising once, rising then
    flat. The judgement must see the trend and still say no."""
    values = [v * scale for v in intervals]
    if order == "ascending":
        values.sort()
    elif order == "rising once":
        values[:2] = sorted(values[:2])
    elif order == "rising then flat":
        values = sorted(values[: len(values) // 2]) + [max(values)] * (
            len(values) - len(values) // 2
        )
    assert not analyze_backoff(times_of(values)).exponential(1.5)


@pytest.mark.parametrize("family", ["band1.5", "band4", "band40", "exponential", "lognormal"])
def test_retry_storms_of_any_spread_are_judged_backoff_at_most_alpha_of_the_time(family):
    """The guarantee for storms drawn alike: at most ALPHA (1%) judged backoff, for
    any distribution of their intervals. 300 storms of each length, a fixed seed:
    measured 0-15 in 2000 per family and length (0-0.75%) while designing; the bound
    below is ALPHA with room for the count's own noise (binomial, 3 sd)."""
    rng = random.Random(f"storms-{family}")
    for count in (5, 8, 30, 153):
        judged = sum(
            analyze_backoff(times_of(storm(rng, count, family))).exponential(1.5)
            for _ in range(300)
        )
        assert judged <= 300 * ALPHA + 3 * math.sqrt(300 * ALPHA), (family, count, judged)


def test_the_storm_that_ci_saw_judged_as_backoff_is_a_storm():
    """The weakened exchange's storm that the old judgement passed (growth x1.93):
    its first intervals rose, then fell back; 153 reconnects in all."""
    rng = random.Random(7)
    seen = [0.033, 0.063, 0.024, 0.041, 0.043, 0.027, 0.015]
    intervals = seen + [rng.uniform(0.010, 0.035) for _ in range(146)]
    with pytest.raises(AssertionError, match="do not grow beyond what chance gives a retry storm"):
        assert_backoff(times_of(intervals))


#: A later CI run's storm, passed by the old judgement with growth x2.02: the intervals
#: its report still showed (its first ones were cut off), 182 of about 190.
CI_STORM_2 = [
    0.012,
    0.018,
    0.012,
    0.012,
    0.012,
    0.012,
    0.012,
    0.011,
    0.011,
    0.012,
    0.014,
    0.013,
    0.012,
    0.012,
    0.012,
    0.013,
    0.020,
    0.034,
    0.018,
    0.015,
    0.013,
    0.030,
    0.018,
    0.012,
    0.012,
    0.012,
    0.016,
    0.011,
    0.015,
    0.011,
    0.017,
    0.018,
    0.036,
    0.013,
    0.019,
    0.016,
    0.012,
    0.011,
    0.012,
    0.012,
    0.012,
    0.011,
    0.011,
    0.011,
    0.011,
    0.012,
    0.012,
    0.012,
    0.011,
    0.011,
    0.011,
    0.012,
    0.015,
    0.011,
    0.013,
    0.013,
    0.012,
    0.021,
    0.015,
    0.013,
    0.014,
    0.014,
    0.012,
    0.021,
    0.012,
    0.024,
    0.013,
    0.012,
    0.013,
    0.017,
    0.014,
    0.011,
    0.014,
    0.013,
    0.015,
    0.012,
    0.012,
    0.014,
    0.013,
    0.011,
    0.013,
    0.012,
    0.013,
    0.012,
    0.016,
    0.011,
    0.012,
    0.011,
    0.021,
    0.011,
    0.012,
    0.013,
    0.020,
    0.013,
    0.012,
    0.037,
    0.027,
    0.016,
    0.016,
    0.035,
    0.013,
    0.012,
    0.012,
    0.015,
    0.016,
    0.026,
    0.021,
    0.013,
    0.027,
    0.012,
    0.012,
    0.011,
    0.011,
    0.013,
    0.013,
    0.012,
    0.012,
    0.012,
    0.013,
    0.012,
    0.011,
    0.012,
    0.015,
    0.012,
    0.012,
    0.012,
    0.013,
    0.018,
    0.012,
    0.012,
    0.016,
    0.012,
    0.018,
    0.016,
    0.013,
    0.012,
    0.011,
    0.033,
    0.017,
    0.016,
    0.025,
    0.013,
    0.021,
    0.012,
    0.017,
    0.033,
    0.012,
    0.013,
    0.011,
    0.013,
    0.011,
    0.012,
    0.013,
    0.011,
    0.011,
    0.013,
    0.012,
    0.011,
    0.011,
    0.011,
    0.011,
    0.011,
    0.011,
    0.011,
    0.012,
    0.012,
    0.012,
    0.012,
    0.011,
    0.012,
    0.031,
    0.023,
    0.014,
    0.014,
    0.012,
    0.012,
    0.021,
    0.011,
    0.013,
    0.016,
    0.022,
    0.029,
]


def test_the_second_storm_that_ci_saw_judged_as_backoff_is_a_storm():
    with pytest.raises(AssertionError, match="do not grow beyond what chance gives a retry storm"):
        assert_backoff(times_of(CI_STORM_2))


@given(step=st.floats(0.01, 1.0), count=st.integers(10, 60))
def test_linear_backoff_grows_but_is_not_exponential(step, count):
    analysis = analyze_backoff(times_of([step * (k + 1) for k in range(count)]))
    assert analysis.grows
    assert not analysis.exponential(1.5)


@given(count=st.integers(1, 4), factor=st.floats(2.0, 10.0))
def test_too_few_attempts_are_said_to_be_too_few(count, factor):
    """Even a perfect doubling cannot be told from a storm in fewer than
    min_intervals() + 1 attempts at the 1% risk: one order in 4! = 24 is the
    increasing one."""
    assert min_intervals() == 5
    times = times_of([factor**k for k in range(count)])
    assert not analyze_backoff(times).decidable
    with pytest.raises(AssertionError, match=r"at least 6 are needed to tell"):
        assert_backoff(times)


@given(st.lists(st.floats(0.001, 10.0), min_size=2, max_size=7, unique=True))
def test_the_exact_p_value_is_the_share_of_orders_at_least_as_increasing(values):
    """Counted by brute force over every order of up to 7 values."""
    s = kendall_s(values)
    orders = list(itertools.permutations(values))
    share = sum(kendall_s(o) >= s for o in orders) / len(orders)
    assert trend_p_value(values) == pytest.approx(share)


def test_the_normal_approximation_is_close_to_the_exact_count_where_they_meet():
    rng = random.Random(3)
    for _ in range(20):
        values = [rng.random() for _ in range(30)]
        exact = trend_p_value(values)
        n, s = 30, kendall_s(values)
        z = (s - 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
        assert 0.5 * math.erfc(z / math.sqrt(2)) == pytest.approx(exact, abs=0.01)
