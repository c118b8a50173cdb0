import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError, parse_duration, parse_signal


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2", 2.0),
        ("2s", 2.0),
        ("250ms", 0.25),
        (" 1.5 s ", 1.5),
        ("1m", 60.0),
        ("1min", 60.0),
        ("2h", 7200.0),
        (".5", 0.5),
        (3, 3.0),
        (0.1, 0.1),
    ],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["", "abc", "-1", "0", "0s", "1 parsec", "1e3", "nan", True, None, [1], -2, 0]
)
def test_bad_durations_are_refused_with_an_example(bad):
    with pytest.raises(ConfigurationError, match=r"duration|positive|number"):
        parse_duration(bad, name="dwell")


@given(st.floats(min_value=0.001, max_value=1e6, allow_nan=False))
def test_any_positive_number_of_seconds_round_trips(value):
    assert parse_duration(value) == value
    assert parse_duration(f"{value:.3f}s") == pytest.approx(round(value, 3))


@given(st.text(max_size=12))
def test_duration_parser_never_raises_anything_but_configuration_error(text):
    try:
        result = parse_duration(text)
    except ConfigurationError:
        return
    assert result > 0


@pytest.mark.parametrize("value", [signal.SIGKILL, 9, "SIGKILL", "kill", " sigkill "])
def test_signals_parse(value):
    assert parse_signal(value) is signal.SIGKILL


@pytest.mark.parametrize("bad", ["SIGFOO", "", 0, 999, True, 1.5])
def test_bad_signals_are_refused(bad):
    with pytest.raises(ConfigurationError, match="signal"):
        parse_signal(bad)
