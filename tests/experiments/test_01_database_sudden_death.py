"""Experiment 01: database sudden death.

PostgreSQL's postmaster is SIGKILLed from the host while orders flow. The exchange
must say clearly that the database is unavailable (503 with a JSON error, the
dashboard's "Database unavailable"), keep serving market data from its cache,
reconnect by itself once the restart policy brings PostgreSQL back, and lose no
acknowledged order.
"""

from __future__ import annotations

import pytest

from pytest_chaos import assert_backoff, wait_for_recovery

# The guide's success criterion: recovery in under 60 s. Measured here over 11 runs: 1.0-1.6 s
# (postgres restart by the restart policy + crash recovery + the API's backoff).
RECOVERY_LIMIT_S = 60.0

pytestmark = [
    pytest.mark.experiment("01"),
    pytest.mark.chaos_backends("compose", "swarm"),
    pytest.mark.database,
    pytest.mark.root,
    pytest.mark.slow,
]


def test_database_sudden_death(chaos, exchange):
    # 1. Baseline: the exchange serves orders and market data; the book is cached.
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    with exchange.load(orders=20, market=10, ready=10, dashboard=4) as load:
        load.wait_for_records("orders", 20)
        baseline = load.records("orders")
        assert all(r.status == 201 for r in baseline), "baseline orders failed before any fault"

        # 3. Sudden death: SIGKILL of the postmaster, from the host.
        killed = chaos.kill("postgres", "SIGKILL")

        # 5. Recovery: the API is ready again and acknowledges a new order.
        recovery = wait_for_recovery(
            exchange.accepts_orders,
            since=killed.applied_at,
            timeout=RECOVERY_LIMIT_S,
            interval=0.05,
            what="order placement after the database died",
        )
        recovered_at = killed.applied_at + recovery.recovery_time_s
        load.wait_for_records("orders", len(load.records("orders")) + 10)

    window = {"since": killed.applied_at, "until": recovered_at}
    orders = load.records("orders", **window)
    failed = [r for r in orders if r.status != 201]
    ready = load.records("ready", **window)
    market = load.records("market", **window)
    dashboard = load.records("dashboard", **window)

    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3))
    chaos.record("orders_acknowledged", len(load.acknowledged("orders")) + len(exchange.probe_acks))
    chaos.record("errors_during_fault", len(failed))
    chaos.record("orders_during_fault", len(orders))
    chaos.record("market_requests_during_fault", len(market))

    # First the invariant that matters most: no acknowledged order was lost.
    exchange.check_no_orders_lost(load, chaos)

    # The API said the database was unavailable, in its readiness and on the dashboard.
    assert any(r.status == 503 and r.summary == "down" for r in ready), (
        f"/ready never reported the database down during the outage: {ready}"
    )
    assert any(r.summary is True for r in dashboard), (
        "the dashboard never showed 'Database unavailable' during the outage"
    )
    # Orders were refused clearly, never with a 500, a hang or a dropped connection.
    unclear = [r for r in failed if (r.status, r.summary) != (503, "database_unavailable")]
    assert not unclear, f"orders failed without a clear 503 database_unavailable: {unclear[:5]}"
    # Market data kept flowing: never failed, and served (marked stale) from the cache
    # while the database could not answer.
    failed_market = [r for r in market if r.status != 200]
    assert not failed_market, f"market data failed during the outage: {failed_market[:5]}"
    fallback = [r for r in market if r.summary == "cache-fallback"]
    chaos.record("market_served_from_cache_during_fault", len(fallback))
    assert fallback, f"no market data came from the cache fallback during the outage: {market}"

    assert recovery.recovery_time_s < RECOVERY_LIMIT_S


@pytest.mark.bpf
def test_database_process_death_reconnects_with_backoff(chaos, exchange, bpf):
    """The guide's view of the same failure: the postmaster alone dies, the database
    host (its container, address and name) stays, and PostgreSQL's supervisor starts
    it again after a delay (3 s here). Every reconnect of the API meets a refused
    connection; BPF times them, and the intervals must grow: exponential backoff,
    not a retry storm."""
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    with exchange.load(orders=20, market=10, ready=10, dashboard=1) as load:
        load.wait_for_records("orders", 10)
        with bpf.watch("trading-api", probes=("connect",)) as probes:
            if probes.support.available is False:
                pytest.skip(f"the connect timeline needs BPF: {probes.support.reason}")
            died = chaos.kill("postgres", "SIGKILL", process="postgres")
            recovery = wait_for_recovery(
                exchange.accepts_orders,
                since=died.applied_at,
                timeout=RECOVERY_LIMIT_S,
                interval=0.05,
                what="order placement after the postmaster died",
            )
    outage_end = died.applied_at + recovery.recovery_time_s
    attempts = [
        a
        for a in probes.observation.attempts_to(5432)
        if died.applied_at <= a.started <= outage_end
    ]
    refused = [a for a in attempts if a.outcome == "refused"]
    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3))
    chaos.record("reconnect_attempts", len(attempts))
    chaos.record("reconnects_refused_errno_111", len(refused))
    assert refused, f"no refused connect seen during the outage: {attempts}"
    assert {a.errno for a in refused} == {111}
    backoff = assert_backoff([a.started for a in refused], min_attempts=3)
    chaos.record("backoff_intervals_s", ", ".join(f"{i:.3f}" for i in backoff.intervals))
    chaos.record("backoff_growth", round(backoff.growth_factor or 0.0, 2))
    failed = [
        r
        for r in load.records("orders", since=died.applied_at, until=outage_end)
        if r.status != 201
    ]
    unclear = [r for r in failed if (r.status, r.summary) != (503, "database_unavailable")]
    assert not unclear, f"orders failed without a clear 503 database_unavailable: {unclear[:5]}"
    assert recovery.recovery_time_s < RECOVERY_LIMIT_S
    exchange.check_no_orders_lost(load, chaos)
