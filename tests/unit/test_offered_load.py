"""Offered against achieved load. The windows against generated schedules and fault
spans whose answer is known (every request in the window of the faults in force when
it was due, counts and seconds adding up, windows named by where they fall); the
nearest-rank percentile against sorted values; and the load generator against a real
server on loopback that stops answering: the requests it held back are counted, in
their window, and the response times include them."""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import Flow, LoadGenerator, Request
from pytest_chaos.observe.offered import (
    FaultSpan,
    Slot,
    load_figures,
    percentile,
    rate_windows,
)

LABELS = ("partition api", "pause db", "kill cache")
START, STOP = 0.0, 100.0

spans = st.lists(
    st.builds(
        lambda label, a, length, open_: FaultSpan(label, a, None if open_ else a + length),
        st.sampled_from(LABELS),
        st.floats(0, 99),
        st.floats(0.01, 50),
        st.booleans(),
    ),
    max_size=4,
).map(lambda found: sorted(found, key=lambda f: f.start))
slots = st.lists(
    st.builds(Slot, st.sampled_from(("orders", "reads")), st.floats(0, 99.99), st.booleans()),
    max_size=80,
)


def in_force_at(faults, t):
    return {f.label for f in faults if f.start <= t and (f.end is None or t < f.end)}


@given(slots, spans)
def test_each_request_is_counted_once_in_the_window_of_the_faults_in_force_when_due(
    schedule, faults
):
    windows = rate_windows(schedule, faults, START, STOP)
    for flow in {s.flow for s in schedule}:
        mine = [w for w in windows if w.flow == flow]
        assert sum(w.offered for w in mine) == sum(s.flow == flow for s in schedule)
        assert sum(w.sent for w in mine) == sum(s.flow == flow and s.sent for s in schedule)
        assert sum(w.seconds for w in mine) == pytest.approx(STOP - START)
    by_name = {(w.flow, w.name): w for w in windows}
    faulted_times = sorted({START, *(t for f in faults for t in (f.start, f.end) if t is not None)})
    ever = [t for t in faulted_times if in_force_at(faults, t)]
    for slot in schedule:
        truth = in_force_at(faults, slot.due)
        fitting = [
            w
            for (flow, _), w in by_name.items()
            if flow == slot.flow and set(filter(None, w.faults.split(" + "))) == truth
        ]
        assert fitting, (slot, truth, windows)
        if truth:
            assert all(w.name.startswith("during") for w in fitting)
        elif not ever or slot.due < min(ever):
            assert any(w.name == "before" for w in fitting)
        else:
            assert any(w.name in ("between", "after") for w in fitting)


@given(slots, spans)
def test_the_same_faults_are_one_window_numbered_in_the_order_first_in_force(schedule, faults):
    windows = rate_windows(schedule, faults, START, STOP)
    during = [w for w in windows if w.name.startswith("during")]
    seen: dict[frozenset[str], str] = {}
    for w in during:
        key = frozenset(w.faults.split(" + "))
        assert seen.setdefault(key, w.name) == w.name
    numbers = [int(w.name.removeprefix("during")) for w in windows if w.name.startswith("during")]
    first_flow = [w for w in windows if w.flow == windows[0].flow] if windows else []
    assert [w.name for w in first_flow if w.name.startswith("during")] == [
        f"during{k}" for k in range(1, len({*numbers}) + 1)
    ]


def test_rates_are_per_second_of_the_window():
    schedule = [Slot("orders", t / 10, t % 4 != 0) for t in range(1000)]  # 10/s for 100 s
    windows = rate_windows(schedule, [FaultSpan("pause db", 20.0, 30.0)], START, STOP)
    named = {w.name: w for w in windows}
    assert list(named) == ["before", "during1", "after"]
    assert named["during1"].faults == "pause db"
    assert named["during1"].seconds == pytest.approx(10.0)
    assert named["during1"].offered_per_s == pytest.approx(10.0)
    assert named["during1"].sent_per_s == pytest.approx(7.5)
    assert named["during1"].not_sent == 25


@given(st.lists(st.one_of(st.floats(0, 10), st.just(math.inf)), min_size=1), st.floats(1, 100))
def test_the_percentile_is_a_value_that_occurred_by_nearest_rank(values, q):
    found = percentile(values, q)
    ordered = sorted(values)
    assert found in values
    assert sum(v <= found for v in ordered) >= q / 100 * len(ordered)
    assert sum(v < found for v in ordered) < q / 100 * len(ordered)


class Slow(BaseHTTPRequestHandler):
    hang = threading.Event()

    def do_GET(self):
        if Slow.hang.is_set():
            time.sleep(1.5)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    Slow.hang.clear()
    httpd.shutdown()
    httpd.server_close()


def test_requests_held_back_by_a_slow_server_are_counted_and_never_flatter(slow_server):
    flow = Flow("reads", 50, lambda n: Request("GET", slow_server))
    with LoadGenerator([flow], max_in_flight=4, request_timeout=5) as load:
        load.wait_for_records("reads", 10)
        Slow.hang.set()
        hung_at = time.monotonic()
        deadline = hung_at + 10
        while len(load.not_sent()) < 20:
            assert time.monotonic() < deadline, "the generator never held a request back"
            time.sleep(0.01)
        held_until = time.monotonic()
        Slow.hang.clear()
    held = load.not_sent("reads")
    assert all(r.in_flight == 4 for r in held)
    assert load.skipped == len(held)
    answered = len(load.records("reads"))
    assert load.offered("reads") == answered + len(held)
    times = load.response_times("reads", since=hung_at, until=held_until)
    assert sum(math.isinf(t) for t in times) == len(load.not_sent(since=hung_at, until=held_until))
    # More than half held back while the server hung: the median is unanswered.
    assert math.isinf(percentile(times, 50))
    finite = [r.latency_s for r in load.records("reads", since=hung_at, until=held_until)]
    assert max(finite) < 5  # the sent ones alone say "slow", not "not served"
    figures = load_figures([load], [FaultSpan("server hangs", hung_at, held_until)])
    assert figures["load_reads_offered"] == load.offered()
    assert figures["load_reads_not_sent"] == len(held)
    assert figures["load_during1_faults"] == "server hangs"
    assert figures["load_reads_during1_sent_per_s"] < figures["load_reads_during1_offered_per_s"]
    assert figures["load_reads_before_sent_per_s"] == pytest.approx(
        figures["load_reads_before_offered_per_s"]
    )
