"""The pure parts of BPF observation: pairing kernel events into connect attempts,
histograms, backoff analysis, and where bcc's headers come from."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError, EnvironmentProblem
from pytest_chaos.observe.backoff import analyze_backoff, assert_backoff
from pytest_chaos.observe.bpf import _event_name
from pytest_chaos.observe.events import RawConnectEvent, assemble_attempts
from pytest_chaos.observe.histogram import Histogram
from pytest_chaos.observe.kernel import kernel_source
from pytest_chaos.observe.observation import PortTraffic, TcpObservation

SRC, DST = "172.20.0.5", "172.20.0.2"


def ev(ts, kind, sk=1, sport=0, error=0, dport=5432):
    return RawConnectEvent(ts, kind, sk, SRC, DST, sport, dport, error)


def test_a_refused_connect_pairs_its_error_report_by_four_tuple():
    # Started (no source port yet), closed, then the error report.
    attempts = assemble_attempts(
        [ev(1.0, 1), ev(1.001, 4, sport=40000), ev(1.002, 3, sk=0, sport=40000, error=111)]
    )
    assert [(a.outcome, a.errno, a.port, a.source_port) for a in attempts] == [
        ("refused", 111, 5432, 40000)
    ]
    assert attempts[0].ended == pytest.approx(1.001)


def test_outcomes_timeout_established_gave_up_and_pending():
    events = [
        ev(1.0, 1, sk=1), ev(4.0, 3, sk=0, sport=1, error=110), ev(4.0, 4, sk=1, sport=1),
        ev(5.0, 1, sk=2), ev(5.1, 2, sk=2, sport=2),
        ev(6.0, 1, sk=3), ev(7.0, 4, sk=3, sport=3),
        ev(8.0, 1, sk=4),
    ]  # fmt: skip
    assert [a.outcome for a in assemble_attempts(events)] == [
        "timeout",
        "established",
        "closed",
        "pending",
    ]


def test_a_reused_socket_address_starts_a_new_attempt():
    attempts = assemble_attempts([ev(1.0, 1), ev(2.0, 1), ev(2.1, 2, sport=9)])
    assert [a.outcome for a in attempts] == ["pending", "established"]


def test_an_error_of_another_connection_is_not_taken():
    events = [ev(1.0, 1), ev(1.1, 4, sport=1), ev(1.1, 3, sk=0, sport=2, error=111)]
    assert assemble_attempts(events)[0].outcome == "closed"


def test_histogram_percentiles_interpolate_inside_buckets():
    hist = Histogram({3: 50, 4: 50})  # 50 values in [8, 16), 50 in [16, 32)
    assert hist.count == 100
    assert hist.percentile(50) == pytest.approx(16.0)
    assert hist.percentile(25) == pytest.approx(12.0)
    assert hist.percentile(100) == pytest.approx(32.0)
    assert Histogram().percentile(99) == 0.0
    assert hist.figures("bpf_runq")["bpf_runq_p95_us"] == pytest.approx(30.4)


@given(
    st.dictionaries(st.integers(0, 40), st.integers(0, 1000), min_size=1),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_histogram_percentiles_are_monotonic_and_bounded(buckets, p, q):
    hist = Histogram(buckets)
    if hist.count == 0:
        return
    low, high = sorted((p, q))
    assert hist.percentile(low) <= hist.percentile(high)
    used = [b for b, c in buckets.items() if c]
    assert (0 if min(used) == 0 else 2 ** min(used)) <= hist.percentile(low) <= 2 ** (max(used) + 1)


def test_linear_histogram_buckets_have_the_width_given():
    # Round trips in 0.1 ms buckets: 10 samples in [50.0, 50.1) ms, 10 in [100.0, 100.1).
    hist = Histogram({500: 10, 1000: 10}, unit="ms", width=0.1)
    assert hist.percentile(25) == pytest.approx(50.05)
    assert hist.percentile(50) == pytest.approx(50.1)
    assert hist.percentile(100) == pytest.approx(100.1)
    assert hist.figures("rtt") == {
        "rtt_count": 20, "rtt_p50_ms": 50.1, "rtt_p95_ms": 100.09, "rtt_p99_ms": 100.1,
    }  # fmt: skip
    with pytest.raises(ConfigurationError):
        Histogram({1: 1}, width=-1)


def test_traffic_per_port_reads_zeros_for_a_silent_port_and_refuses_without_bpf():
    obs = TcpObservation(served={80: PortTraffic(connections=2, segments=3, bytes=300)}, peers={})
    assert obs.served_on(80).bytes == 300
    assert obs.served_on(8080) == PortTraffic()
    assert obs.peer(5432).connections == 0
    figures = obs.figures("bpf_nginx")
    assert figures["bpf_nginx_served_80_bytes"] == 300
    assert figures["bpf_nginx_served_80_connections"] == 2
    with pytest.raises(EnvironmentProblem, match="BPF did not run"):
        TcpObservation(source="proc", degraded="BPF needs root").peer(5432)


def backoff_times(base, factor, cap, count, jitter=0.0, seed=0):
    rng, t, times = random.Random(seed), 0.0, [0.0]
    for n in range(count - 1):
        delay = min(cap, base * factor**n)
        t += delay * (1 - jitter * rng.random())
        times.append(t)
    return times


def test_skipped_probe_runs_are_figures_by_event_and_zero_is_said():
    obs = TcpObservation(retransmits=5, missed_events={"tcp:tcp_retransmit_skb": 1})
    figures = obs.figures("bpf_api")
    assert figures["bpf_api_missed_events"] == 1
    assert figures["bpf_api_missed_tcp_retransmit_skb"] == 1
    assert obs.missed("tcp:tcp_retransmit_skb") == 1
    assert obs.missed("sock:inet_sock_set_state") == 0
    quiet = TcpObservation(retransmits=5, missed_events={}).figures("bpf_api")
    assert quiet["bpf_api_missed_events"] == 0
    # A kernel that does not say (before 5.12), or no BPF: no figure that claims zero.
    assert "bpf_api_missed_events" not in TcpObservation(retransmits=5).figures("bpf_api")


def test_a_probe_function_is_named_by_its_event():
    assert _event_name("tracepoint__tcp__tcp_retransmit_skb") == "tcp:tcp_retransmit_skb"
    assert _event_name("tracepoint__sock__inet_sock_set_state") == "sock:inet_sock_set_state"
    assert _event_name("kprobe__tcp_v4_connect") == "kprobe__tcp_v4_connect"


@given(st.floats(0.01, 1.0), st.floats(1.6, 3.0), st.integers(6, 12))
def test_exponential_backoff_without_jitter_is_measured_exactly(base, factor, count):
    analysis = analyze_backoff(backoff_times(base, factor, cap=1e9, count=count))
    assert analysis.growth_factor == pytest.approx(factor, rel=1e-6)
    assert analysis.exponential(1.5)


def test_capped_backoff_with_jitter_shows_growth_cap_and_jitter():
    # The exchange's own policy: base 0.02 s, doubling, cap 5 s, equal jitter of 50%.
    times = backoff_times(0.02, 2.0, cap=5.0, count=14, jitter=0.5, seed=3)
    analysis = assert_backoff(times)
    assert analysis.growth_factor >= 1.5
    assert analysis.cap is not None
    assert 2.5 <= analysis.cap <= 5.0
    assert analysis.jitter > 0


def test_a_retry_storm_fails_showing_its_intervals():
    storm = [i * 0.01 for i in range(20)]
    with pytest.raises(
        AssertionError,
        match=r"no exponential backoff in 20 connect attempts .*intervals 0\.010, 0\.010",
    ):
        assert_backoff(storm)


def test_too_few_attempts_to_judge_is_said_so():
    with pytest.raises(AssertionError, match="only 2 connect attempts"):
        assert_backoff([0.0, 0.1])


def test_kernel_headers_come_from_the_environment_the_kernel_or_the_merged_tree(tmp_path):
    modules, merged = tmp_path / "modules", tmp_path / "merged"
    assert kernel_source(
        "6.1", modules=modules, merged_root=merged, environ={"BCC_KERNEL_SOURCE": "/x"}
    ) == ("/x", "")
    path, problem = kernel_source("6.1", modules=modules, merged_root=merged, environ={})
    assert path is None
    assert "no kernel headers for 6.1" in problem
    assert "python -m pytest_chaos kernel-headers" in problem
    (merged / "6.1").mkdir(parents=True)
    (merged / "6.1" / ".complete").touch()
    assert kernel_source("6.1", modules=modules, merged_root=merged, environ={}) == (
        str(merged / "6.1"),
        "",
    )
    # A host with real headers: bcc's own default wins over the merged tree.
    (modules / "6.1" / "build" / "include").mkdir(parents=True)
    assert kernel_source("6.1", modules=modules, merged_root=merged, environ={}) == (None, "")


ERRNOS = {111: "refused", 110: "timeout", 113: "unreachable", 104: "reset"}


@st.composite
def connect_timelines(draw):
    """True attempts, one after another on a few reused socket addresses, each ending
    established, with an error (its report by 4-tuple from its start to just after its
    close), closed
    by the caller, or still pending (the last on its socket); with the raw events a
    probe would have sent for them."""
    sockets = draw(st.integers(1, 3))
    attempts, events = [], []
    free_at = dict.fromkeys(range(1, sockets + 1), 0.0)
    port = 40000
    for _ in range(draw(st.integers(0, 25))):
        sk = draw(st.sampled_from(sorted(free_at)))
        if free_at[sk] is None:
            continue  # a pending attempt holds it for good
        start = free_at[sk] + draw(st.floats(0.001, 2.0))
        end = draw(st.sampled_from(["established", "error", "closed", "pending"]))
        port += 1
        events.append(ev(start, 1, sk=sk))
        if end == "pending":
            attempts.append(("pending", None, start))
            free_at[sk] = None
            continue
        took = draw(st.floats(0.0005, 3.0))
        if end == "established":
            events.append(ev(start + took, 2, sk=sk, sport=port))
            attempts.append(("established", None, start))
        elif end == "closed":
            events.append(ev(start + took, 4, sk=sk, sport=port))
            attempts.append(("closed", None, start))
        else:
            errno = draw(st.sampled_from(sorted(ERRNOS)))
            # Reported while it was open or just after the close (the kernel's order).
            reported = start + (took + 0.5) * draw(st.floats(0.0, 1.0))
            events += [ev(start + took, 4, sk=sk, sport=port),
                       ev(reported, 3, sk=0, sport=port, error=errno)]  # fmt: skip
            attempts.append((ERRNOS[errno], errno, start))
        free_at[sk] = start + took
    # Errors of other connections (ports no attempt used) mixed in.
    for t in draw(st.lists(st.floats(0, 60), max_size=5)):
        events.append(ev(t, 3, sk=0, sport=1, error=111))
    return sorted(attempts, key=lambda a: a[2]), draw(st.permutations(events))


@given(connect_timelines())
def test_attempts_are_assembled_exactly_from_events_in_any_order(timeline):
    """Each attempt once, in start order, with its outcome and errno, whatever order
    the events arrive in: the connect figures experiments assert on (refused attempts
    and their errno, the backoff timeline) count exactly what happened."""
    truth, events = timeline
    found = assemble_attempts(events)
    starts = [a.started for a in found]
    assert starts == sorted(starts)
    # Attempts that started at the same instant have no order of their own.
    assert sorted((a.started, a.outcome, a.errno or 0) for a in found) == sorted(
        (s, o, e or 0) for o, e, s in truth
    )
