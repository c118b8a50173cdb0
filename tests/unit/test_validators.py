"""Property-based tests of the fault validators: anything they accept is in range,
anything else is a ConfigurationError (never another exception)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError
from pytest_chaos.faults.bandwidth import parse_rate
from pytest_chaos.faults.latency import check_delay
from pytest_chaos.faults.network import check_direction, check_mode, check_percent
from pytest_chaos.faults.resources import check_cpus

anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))


@given(anything)
def test_percent_is_in_0_to_100_or_refused(value):
    try:
        percent = check_percent(value)
    except ConfigurationError:
        return
    assert 0 < percent <= 100


@given(st.integers(1, 100))
def test_every_whole_percentage_is_accepted_with_or_without_a_sign(value):
    assert check_percent(value) == check_percent(f"{value}%") == value


@given(st.one_of(anything, st.from_regex(r"\A\d{1,6}(\.\d)?(bit|kbit|mbit|gbit|bps|kbps|mbps)\Z")))
def test_rates_are_in_range_or_refused(value):
    try:
        bits = parse_rate(value)
    except ConfigurationError:
        return
    assert 8 * 1024 <= bits <= 100e9


@pytest.mark.parametrize(
    ("text", "bits"),
    [("1mbit", 10**6), ("512kbit", 512_000), ("10mbps", 80 * 10**6), (64_000, 64_000)],
)
def test_rates_parse(text, bits):
    assert parse_rate(text) == bits


@given(anything, anything)
def test_delays_and_jitter_are_consistent_or_refused(delay, jitter):
    try:
        delay_s, jitter_s = check_delay(delay, jitter)
    except ConfigurationError:
        return
    assert 0 < delay_s <= 10
    assert 0 <= jitter_s <= delay_s


@given(anything)
def test_cpus_are_within_this_machine_or_refused(value):
    try:
        cpus = check_cpus(value)
    except ConfigurationError:
        return
    assert cpus >= 0.01


@pytest.mark.parametrize("bad", ["", "DROP", None, "both "])
def test_modes_and_directions_are_closed_sets(bad):
    with pytest.raises(ConfigurationError):
        check_mode(bad)
    with pytest.raises(ConfigurationError):
        check_direction(bad)
