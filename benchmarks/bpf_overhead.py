"""What BPF observation costs the exchange: order throughput and latency with every
probe attached to the trading API and PostgreSQL vs none, in the same run,
interleaved (none, probes, none, probes, ...); and the probes' start-up time.

    sudo .venv/bin/python benchmarks/bpf_overhead.py [--rounds 3] [--seconds 10]

It starts its own copy of the exchange and removes it afterwards. It prints
figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from faults import stack, wait_until  # noqa: E402

from pytest_chaos.observe.bpf import PROBES, BpfSession, scope_of  # noqa: E402


async def closed_loop(url: str, seconds: float, workers: int) -> list[float]:
    """``workers`` clients placing orders back to back; the latency of each."""
    import httpx

    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        while time.monotonic() < deadline:
            order = {
                "symbol": "BENCH",
                "side": "buy" if n % 2 else "sell",
                "price": 100,
                "quantity": 1,
                "client_order_id": uuid.uuid4().hex,
            }
            start = time.monotonic()
            response = await client.post(f"{url}/orders", json=order)
            if response.status_code == 201:
                latencies.append(time.monotonic() - start)

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(worker(client, n) for n in range(workers)))
    return latencies


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return len(ordered) / seconds, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/bpf_overhead.py needs root (sudo): BPF needs it.")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with stack(None) as project:
        api = project.service("trading-api")
        host, port = api.published_port(8080)
        url = f"http://{host}:{port}"
        wait_until(project.all_healthy)
        asyncio.run(closed_loop(url, 3, args.workers))  # warm up
        scope = scope_of([api, project.service("postgres")])
        results: dict[str, list[tuple[float, float, float]]] = {"none": [], "probes": []}
        startups = []
        for _ in range(args.rounds):
            results["none"].append(
                summary(asyncio.run(closed_loop(url, args.seconds, args.workers)), args.seconds)
            )
            start = time.monotonic()
            with BpfSession(pid=scope.pid, probes=PROBES, scope=scope) as session:
                startups.append(time.monotonic() - start)
                if not session.support.available:
                    sys.exit(f"BPF is unavailable: {session.support.reason}")
                latencies = asyncio.run(closed_loop(url, args.seconds, args.workers))
            results["probes"].append(summary(latencies, args.seconds))
        for name, rows in results.items():
            rate = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            print(
                f"{name:7} orders/s {rate:7.1f}   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({len(rows)} rounds of {args.seconds:g} s)"
            )
        print(
            f"probe start-up (all {len(PROBES)} programs compiled and attached): median {statistics.median(startups):.2f} s"
        )


if __name__ == "__main__":
    main()
