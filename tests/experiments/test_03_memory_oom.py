"""Experiment 03: memory pressure until the OOM killer acts.

The trading API's memory is capped a little above what it uses, then a spike of
large open-order pages (each held in memory while it is built) drives it past the
cap while ordinary order flow goes on. The kernel's OOM killer must choose the API
(BPF's victim is the API's process, and Docker reports the OOM for its container),
the restart policy must bring it back, the outage must stay under 60 s, the cap must
be lifted afterwards, and no acknowledged order may be lost.

The cap is written to the container's cgroup: a restarted container comes back in a
fresh cgroup with its configured limits (as a one-off squeeze, not a persisted
``docker update``), so the restarted API is not killed again in a loop.
"""

from __future__ import annotations

import time

import pytest

from pytest_chaos import LoadGenerator, wait_for_recovery

pytestmark = [
    pytest.mark.experiment("03"),
    pytest.mark.resources,
    pytest.mark.bpf,
    pytest.mark.root,
    pytest.mark.slow,
]

# Room above what the API uses, page cache not counted: the kernel reclaims cached
# files before it kills, so room measured from the whole usage is that much larger,
# and it varies (31-50 MiB at the start of six runs here; in one run in ten the spike
# did not reach an OOM within the deadline). Measured here: a spike of 16 clients
# reading 10 000-order pages took the API's cgroup from 49 MiB to 118 MiB, so 40 MiB
# of room is crossed within a second or two of the spike.
HEADROOM = 40 * 2**20
BOOK_ORDERS = 20_000  # open orders in the spiked symbol's book
PAGE = 10_000  # orders per page (the API's maximum)
OOM_DEADLINE_S = 30.0
RECOVERY_LIMIT_S = 60.0


def test_memory_pressure_oom_kill(chaos, exchange, bpf):
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    api = chaos.service("trading-api")
    book = f"{exchange.symbol}.BK"
    exchange.seed_book(book, BOOK_ORDERS)
    restarts_before = api.restart_count()
    api_pid = api.main_pid()
    spike = LoadGenerator(
        [exchange.open_orders_flow(book, rate=40, limit=PAGE)],
        request_timeout=10.0, max_in_flight=24, max_duration=OOM_DEADLINE_S,
    )  # fmt: skip

    with exchange.load(orders=20, market=5, ready=5) as load:
        load.wait_for_records("orders", 10)
        with bpf.watch("trading-api", probes=("process", "pages")) as probes:
            started_wall = time.time()
            memory = chaos.memory_cap("trading-api", api.memory_usage(cache=False) + HEADROOM)
            with spike:
                wait_for_recovery(
                    lambda: bool(memory.oom_victims()), timeout=OOM_DEADLINE_S, interval=0.05,
                    what="the OOM killer choosing a process of the API",
                )  # fmt: skip
            seen_at = time.monotonic()
            recovery = wait_for_recovery(
                exchange.accepts_orders, since=seen_at, timeout=RECOVERY_LIMIT_S, interval=0.05,
                what="order placement after the OOM kill",
            )  # fmt: skip
            recovered_at = seen_at + recovery.recovery_time_s
        load.wait_for_records("orders", len(load.records("orders")) + 5)
        chaos.undo(memory)

    obs = probes.observation
    victims = obs.oom_victims
    if victims:
        chaos.record("bpf_oom_victim", f"{victims[0].comm} (pid {victims[0].pid})", key=True)
    docker_said = [e["action"] for e in api.events(started_wall)]
    reached_90 = memory.reached(0.9)
    growth = memory.peak_bytes - memory.usage_at_start
    chaos.record("memory_limit_mib", memory.limit_bytes // 2**20)
    chaos.record("memory_at_start_mib", round(memory.usage_at_start / 2**20, 1))
    chaos.record("page_cache_at_start_mib", round(memory.cache_at_start / 2**20, 1))
    chaos.record("memory_peak_mib", round(memory.peak_bytes / 2**20, 1))
    chaos.record("memory_growth_mib", round(growth / 2**20, 1))
    chaos.record("pages_served_in_spike", sum(r.status == 200 for r in spike.records()))
    if victims:  # outage: from the kill (BPF's timestamp) to the first order acknowledged
        chaos.record("outage_s", round(recovered_at - victims[0].ts, 3))
        if reached_90 is not None:
            chaos.record("from_90pct_to_oom_kill_s", round(victims[0].ts - reached_90, 3))

    # The OOM killer chose the API itself: BPF's victim is the process that served
    # requests, named as the guide's kernel log names it; the kernel log and Docker agree.
    assert victims, "BPF saw no OOM victim"
    assert (victims[0].pid, victims[0].comm) == (api_pid, "trading-api"), victims
    assert [v.pid for v in memory.oom_victims()][:1] == [api_pid]
    assert "oom" in docker_said, f"Docker reported no OOM for the API: {docker_said}"
    # Memory climbed to the cap; BPF counted at least that many pages allocated by the
    # API (frees are no measure here: the killed process's pages are freed in its own
    # context), and the kernel reclaimed in the API's cgroup before it killed.
    assert memory.peak_bytes >= 0.9 * memory.limit_bytes
    assert (obs.page_allocs or 0) * 4096 >= growth
    assert obs.reclaims, "no reclaim before the OOM kill"
    # The restart policy brought the API back, with no manual step, within the limit.
    assert api.restart_count() == restarts_before + 1
    assert recovered_at - victims[0].ts < RECOVERY_LIMIT_S
    # The cap is gone: the limit in force is the one before the experiment.
    assert memory.limit_in_force() == memory.limit_before
    # Orders refused during the outage were refused, not acknowledged and dropped.
    exchange.check_no_orders_lost(load, chaos)
