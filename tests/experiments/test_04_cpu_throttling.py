"""Experiment 04: CPU throttling.

The trading API is held to less CPU than it used (0.7 of it, at most the guide's 0.5
CPU) while it serves a steady flow of open-order pages. It must degrade, not fail:
every request is answered, only later (requests queue while the API waits for CPU:
BPF sees its threads wait longer in the run queue), and latency returns to its
baseline soon after the quota is lifted. Latency percentiles before, during and
after, and the degradation factor, are recorded.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack

import pytest

from pytest_chaos import (
    EnvironmentProblem,
    FaultDidNotTakeEffect,
    LoadGenerator,
    wait_for_recovery,
)
from pytest_chaos.faults.resources import CpuHandle

pytestmark = [
    pytest.mark.experiment("04"),
    pytest.mark.resources,
    pytest.mark.bpf,
    pytest.mark.root,
    pytest.mark.slow,
]

CPUS = 0.5
# Demand: 20 pages/s of 500 open orders each, from a client that keeps at most 8
# requests in flight (as a client with a connection pool does). Measured here: 11-15 ms
# of API CPU per page. An open-loop flow swung between x1.1 and x60 from run to run;
# with 8 in flight at most, the throttled API's queue stays bounded and latency
# settles near 8 / its throughput: steady enough to assert on.
# The baseline must have room: at 40 pages/s (0.44-0.62 CPU) beside a CPU hog on every
# core the API served only 28-38 of the 40 pages/s offered before any fault (p50
# 37-250 ms), so the quota, 0.7 of that, slowed it only x1.5-2.1 in 3 of 6 runs; a
# degradation is measured from a steady state, not from one already saturated. The
# baseline's held-back share is checked below (BASELINE_HELD_BACK).
# On a faster CPU the same flow needs less than 0.5 CPU and the quota does not bite
# (a fresh-clone CI run measured x0.98): the quota is the guide's 0.5 CPU or, where the
# API used less in the baseline, that use x DEMAND_SHARE. At 0.9 (demand 1.1 x the
# quota) the quota bound in every run but the API's throughput sat at the offered
# rate's edge: p50 x2.2 in one of 4 idle runs, x11.7-13.5 in the others. At 0.7 the
# throttled API serves fewer pages than are offered in every run, so the client's 8
# requests in flight queue and latency settles near 8 / its throughput.
DEMAND_SHARE = 0.7
# On a busy machine the API gets less CPU than it asks for, so the client's 8 requests
# in flight no longer ask for more than the quota, and the quota does not bind
# (measured beside a CPU hog on every core: run-queue p99 7 ms instead of ~100 ms, p50
# only x1.16). So the offered load is raised, one more such client at a time, until at
# least BIND_SHARE of the quota's periods are throttled; if it never binds, the verdict
# is "no effect", not a pass or a failure.
BIND_SHARE = 0.3
MORE_CLIENTS = 4
BIND_WINDOW_S = 1.0  # a measuring window for the share of throttled periods
PAGE, PAGE_RATE, IN_FLIGHT = 500, 20, 8
# The most of the baseline's pages the client may hold back (8 in flight already)
# for the baseline to count as a steady state.
BASELINE_HELD_BACK = 0.05
BASELINE_S = 4.0  # measuring windows, not readiness waits
DWELL_S = 6.0
AFTER_S = 3.0
BACK_LIMIT_S = 30.0


def p(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0.0
    )


def near(p50: float, base_p50: float) -> bool:
    """Back near the baseline: measured here over 6 runs, the median after the restore
    was 0.8-1.6x the one before (a shared machine); the throttled one 6-12x."""
    return p50 <= max(2.0 * base_p50, base_p50 + 0.010)


def throttled_share(quota: CpuHandle, window: float) -> float:
    """The share of the quota's periods throttled over the next ``window`` seconds."""
    throttled_0, periods_0 = quota.throttling()
    time.sleep(window)  # the measuring window
    throttled_1, periods_1 = quota.throttling()
    return (throttled_1 - throttled_0) / max(1, periods_1 - periods_0)


def test_cpu_throttling(chaos, exchange, bpf):
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    book = f"{exchange.symbol}.BK"
    exchange.seed_book(book, PAGE)
    pages = LoadGenerator(
        [exchange.open_orders_flow(book, PAGE_RATE, PAGE)],
        request_timeout=10.0, max_in_flight=IN_FLIGHT, max_duration=120.0,
    )  # fmt: skip
    with exchange.load(orders=10) as orders, pages as load:
        load.wait_for_records("pages", 20)  # warmed up: connections pooled
        api = exchange.project.service("trading-api")
        with bpf.watch("trading-api", probes=("runqueue",), label="before") as before:
            base_from, cpu_from = time.monotonic(), api.cpu_seconds()
            time.sleep(BASELINE_S)  # the baseline's measuring window
            base_until, cpu_until = time.monotonic(), api.cpu_seconds()
        base = [r.latency_s for r in load.records("pages", since=base_from, until=base_until)]
        base_p50 = p(base, 50)
        held = len(load.not_sent("pages", since=base_from, until=base_until))
        offered = load.offered("pages", since=base_from, until=base_until)
        chaos.record("baseline_pages_held_back", held)
        if held > BASELINE_HELD_BACK * offered:
            raise EnvironmentProblem(
                f"no steady state to degrade from: before any fault the API kept up with only "
                f"{offered - held} of {offered} pages offered (8 in flight, the rest held "
                "back); this machine is too busy for experiment 04 now."
            )
        used = (cpu_until - cpu_from) / (base_until - base_from)
        cpus = round(min(CPUS, used * DEMAND_SHARE), 2)

        with (
            bpf.watch("trading-api", probes=("runqueue",), label="during") as during,
            ExitStack() as more,
        ):
            quota = chaos.cpu_quota("trading-api", cpus)
            share = throttled_share(quota, BIND_WINDOW_S)
            clients = 1
            while share < BIND_SHARE and clients <= MORE_CLIENTS:
                flow = exchange.open_orders_flow(book, PAGE_RATE, PAGE)
                client = LoadGenerator([flow], max_in_flight=IN_FLIGHT, max_duration=120.0)
                more.enter_context(client)
                clients += 1
                share = throttled_share(quota, BIND_WINDOW_S)
            chaos.record("quota_bound_share", round(share, 2))
            chaos.record("clients_to_bind", clients)
            if share < BIND_SHARE:
                raise FaultDidNotTakeEffect(
                    f"the {cpus} CPU quota never bound: {share:.0%} of its periods throttled "
                    f"with {clients} clients of {IN_FLIGHT} requests in flight"
                )
            bound_at = time.monotonic()
            time.sleep(DWELL_S)  # the fault's dwell, once it binds
            throttled_periods, periods = quota.throttling()
            more.close()  # back to the one client before the quota is lifted
            chaos.undo(quota)
        restored_at = time.monotonic()

        def back_to_baseline() -> bool:
            # Pages sent after the restore, over the last second: median back near the
            # baseline.
            now = time.monotonic()
            recent = [r.latency_s for r in load.records("pages", since=max(restored_at, now - 1.0))]
            return len(recent) >= 10 and near(p(recent, 50), base_p50)

        back = wait_for_recovery(
            back_to_baseline, since=restored_at, timeout=BACK_LIMIT_S, interval=0.1,
            what="request latency back to its baseline after the quota was lifted",
        )  # fmt: skip
        after_from = time.monotonic()
        time.sleep(AFTER_S)  # the measuring window after recovery
        after = [
            r.latency_s for r in load.records("pages", since=after_from, until=time.monotonic())
        ]

    throttled = [r.latency_s for r in load.records("pages", since=bound_at, until=quota.lifted_at)]
    failed = [r for r in load.records() + orders.records() if not r.ok]
    factor = p(throttled, 50) / base_p50
    for name, values in (("before", base), ("during", throttled), ("after", after)):
        for q in (50, 95, 99):
            chaos.record(f"latency_{name}_p{q}_ms", round(p(values, q) * 1000, 1))
    chaos.record("cpu_used_before", round(used, 3))
    chaos.record("cpu_quota", cpus)
    chaos.record("periods_throttled_share", round(throttled_periods / max(1, periods), 2))
    chaos.record("degradation_factor_p50", round(factor, 2))
    chaos.record("back_to_baseline_s", round(back.recovery_time_s, 3))
    chaos.record("requests_failed", len(failed))
    chaos.record("pages_held_back_by_client", load.skipped)
    chaos.record("pages_served_throttled", len(throttled))
    chaos.record("clients_during_throttle", clients)
    # What the quota lets the API serve this client in the dwell: cpus/used of the
    # baseline's demand (met in full: nothing held back), shared among the clients.
    allowed = PAGE_RATE * DWELL_S * min(1.0, cpus / max(used, 1e-9)) / clients
    chaos.record("pages_the_quota_allows", round(allowed))
    runq_before, runq_during = before.observation.runqueue, during.observation.runqueue
    if runq_during is not None:
        chaos.record("bpf_runq_p99_during_us", round(runq_during.percentile(99)), key=True)

    # Degraded, not failed: every request of every flow was answered successfully.
    assert not failed, f"requests failed while the CPU was throttled: {failed[:5]}"
    # Degraded in proportion, not collapsed: measured over 20 runs per condition, the
    # throttled API served 0.72-1.18 of what its quota allows idle (59-97 pages of
    # 82-86) and 0.87-1.32 beside a CPU hog (73-112). The bound had been half the
    # offered rate, which says nothing of a quota set below the API's use: at 20
    # pages/s that is 0.71 of what the quota allows, and an idle run served 59 of 60.
    assert len(throttled) >= 0.5 * allowed, (
        f"the throttled API collapsed: {len(throttled)} pages served where its quota "
        f"allows about {allowed:.0f}"
    )
    # Only slower. Measured with the quota at 0.7 x the baseline's use, 20 runs each:
    # p50 x21.7-56.3 idle (398-775 ms against 14-20 ms), x13.0-34.2 beside a CPU hog on
    # every core (346-587 ms against 17-27 ms); the guide expects x3-x5, the bound its
    # low end.
    assert factor >= 3.0, f"throttled p50 only x{factor:.2f} the baseline"
    # The cause is visible in the kernel: the API's threads waited longer for a CPU.
    assert runq_before is not None
    assert runq_during is not None
    # A throttled thread waits for the next quota period (100 ms): measured p99
    # 99-121 ms throttled, against 3.5 ms before on an idle machine and 9-15 ms beside a
    # CPU hog on every core (which also makes the threads wait). The bound: twice the
    # baseline, and at least 40 ms (0.4 period).
    runq_before_p99, runq_during_p99 = runq_before.percentile(99), runq_during.percentile(99)
    assert runq_during_p99 > max(2 * runq_before_p99, 40_000), (runq_during_p99, runq_before_p99)
    # Back to the baseline soon after the quota was lifted.
    assert back.recovery_time_s < BACK_LIMIT_S
    assert near(p(after, 50), base_p50), (p(after, 50), base_p50)
    exchange.check_no_orders_lost(orders, chaos)
