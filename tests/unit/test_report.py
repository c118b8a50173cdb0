"""The end-of-run table's project-defined columns."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError
from pytest_chaos.report import SummaryColumn, columns, parse_columns, row, table
from pytest_chaos.report import TestResult as Result

NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


@given(
    title=st.from_regex(r"[a-z][a-z /]{0,15}[a-z]", fullmatch=True),
    names=st.lists(NAMES, min_size=1, max_size=3),
)
def test_a_column_line_reads_back_as_written(title, names):
    [column] = parse_columns([f"{title} = {'/'.join(names)}"])
    assert column == SummaryColumn(title, tuple(names))


@pytest.mark.parametrize("line", ["no equals sign", "= figure", "title = bad name!", "t = a//b"])
def test_a_malformed_line_is_refused(line):
    with pytest.raises(ConfigurationError, match="is not 'TITLE = FIGURE"):
        parse_columns([line])


def test_cells_say_which_figures_the_test_recorded():
    extra = parse_columns(["orders ack/lost = orders_acknowledged/orders_lost", "", "p99 = p99_ms"])
    assert columns(extra)[6:8] == ("orders ack/lost", "p99")
    cells = row(Result("t.py::test_x", figures={"orders_lost": "2"}), extra)
    assert cells[6:8] == ("?/2", "-")


def test_the_recovery_cell_says_who_brought_a_service_back():
    figures = {
        "chaos_fault_1_kind": "kill",
        "chaos_fault_1_target": "db",
        "chaos_fault_1_restored_by": "restart-policy",
        "chaos_fault_2_kind": "pause",
        "chaos_fault_2_target": "cache",
        "chaos_fault_2_restored_by": "still-running",
        "recovery_time_s": "3.5",
    }
    cells = row(Result("t.py::test_x", figures=figures))
    assert "3.50 s (restart-policy)" in cells


def test_an_interrupted_test_reads_interrupted_in_the_table():
    result = Result("t.py::test_x", outcome="interrupted", figures={"chaos_fault_1_kind": "x"})
    assert "INTERRUPTED" in table([result])[2]


def test_the_live_line_shows_requests_in_flight_and_the_oldest_age():
    from pytest_chaos.live import status_line

    class Load:
        def records(self):
            return []

        def in_flight(self):
            return [90.0, 95.5, 99.0]

    line = status_line([("partition api", 80.0)], [Load()], now=100.0)
    assert line == (
        "chaos: partition api for 20.0 s | requests 0 done, 0 failed, 3 in flight (oldest 10.0 s)"
    )


def test_the_live_line_counts_the_requests_held_back():
    from pytest_chaos.live import status_line

    class Load:
        def records(self):
            return []

        def in_flight(self):
            return [99.0] * 4

        def not_sent(self):
            return [object()] * 7

    line = status_line([("pause db", 99.0)], [Load()], now=100.0)
    assert line.endswith("4 in flight (oldest 1.0 s), 7 held back (max_in_flight)")
