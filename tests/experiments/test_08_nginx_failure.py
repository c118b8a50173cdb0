"""Experiment 08: nginx (the front door) fails.

While nginx is down, port 80 refuses connections but the API's own port 8080 keeps
serving, without nginx's rate limit; services behind nginx do not notice; when
nginx is back, port 80 answers again. BPF counts the connections and bytes reaching
port 80 (nginx) and port 8080 (the API), before and during the outage.
"""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest

from pytest_chaos import wait_for_recovery

pytestmark = [
    pytest.mark.experiment("08"),
    pytest.mark.proxy,
    pytest.mark.bpf,
    pytest.mark.root,
    pytest.mark.slow,
]

DWELL_S = 2.0
RECOVERY_LIMIT_S = 60.0
BURST = 300  # requests sent back to back: far above nginx's 50 r/s with a burst of 100


def burst_statuses(url: str) -> dict[int, int]:
    """Send BURST market reads as fast as one client can; count the statuses."""
    counts: dict[int, int] = {}
    with httpx.Client(timeout=5) as client:
        for _ in range(BURST):
            status = client.get(url).status_code
            counts[status] = counts.get(status, 0) + 1
    return counts


def port_refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_nginx_failure(chaos, exchange, bpf):
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    front = httpx.URL(exchange.http_url)
    market_via_nginx = f"{exchange.http_url}/market/{exchange.symbol}"
    market_direct = f"{exchange.api_url}/market/{exchange.symbol}"

    with bpf.watch("nginx", "trading-api", probes=("traffic",), label="before") as before:
        limited = burst_statuses(market_via_nginx)
    assert limited.get(429, 0) > 0, f"nginx did not rate-limit a burst of {BURST}: {limited}"

    # Orders keep flowing to the API's own port through the outage: a history to judge.
    with (
        exchange.load(orders=10) as load,
        bpf.watch("nginx", "trading-api", probes=("traffic",), label="during") as during,
    ):
        load.wait_for_records("orders", 5)
        stopped = chaos.stop("nginx", grace=1)
        refused = port_refuses(front.host, front.port)
        direct = burst_statuses(market_direct)
        order = exchange.place(exchange.order(uuid.uuid4().int % 10**6))
        ready = httpx.get(f"{exchange.api_url}/ready", timeout=5).json()
        time.sleep(DWELL_S)  # the fault's dwell
        during_orders = len(load.records("orders", since=stopped.applied_at))
        restarted = time.monotonic()  # recovery counts from the restart, start-up included
        chaos.undo(stopped)

    def front_door_answers() -> bool:
        return httpx.get(f"{exchange.http_url}/nginx-health", timeout=2).status_code == 200

    recovery = wait_for_recovery(
        front_door_answers, since=restarted, timeout=RECOVERY_LIMIT_S, interval=0.05,
        what="port 80 answering again",
    )  # fmt: skip

    chaos.record("burst_429_via_nginx", limited.get(429, 0))
    chaos.record("burst_429_direct", direct.get(429, 0))
    chaos.record("port_80_refused", int(refused))
    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3))
    chaos.record("orders_during_fault", during_orders)

    assert refused, "port 80 did not refuse connections while nginx was down"
    assert direct == {200: BURST}, f"port 8080 did not serve the whole burst: {direct}"
    assert order.status_code == 201, order.text
    # Nothing behind nginx noticed.
    assert (ready["database"]["state"], ready["cache"]["state"]) == ("up", "up"), ready
    assert recovery.recovery_time_s < RECOVERY_LIMIT_S
    if before.support.available and during.support.available:
        # Seen by the kernel. Before: the whole burst reached port 80, and only what
        # nginx let through reached port 8080 (one request a segment: the 429s never
        # left nginx). During: nothing reached port 80, the whole burst reached 8080.
        seen_before, seen_during = before.observation, during.observation
        front_before, api_before = seen_before.served_on(80), seen_before.served_on(8080)
        front_during, api_during = seen_during.served_on(80), seen_during.served_on(8080)
        for label, seen in (("before", before), ("during", during)):
            for port in (80, 8080):
                traffic = seen.observation.served_on(port)
                chaos.record(f"bpf_port_{port}_connections_{label}", traffic.connections)
                chaos.record(f"bpf_port_{port}_bytes_{label}", traffic.bytes)
        passed = sum(n for status, n in limited.items() if status != 429)
        assert front_before.segments >= BURST, (front_before, limited)
        assert passed <= api_before.segments < BURST, (api_before, limited)
        assert (front_during.connections, front_during.bytes) == (0, 0), front_during
        assert api_during.segments >= BURST + during_orders, (api_during, during_orders)
    else:
        reason = during.support.reason or before.support.reason
        chaos.record("bpf_degraded", reason or "BPF did not run")
    exchange.check_no_orders_lost(load, chaos)
