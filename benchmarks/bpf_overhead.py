"""What BPF observation costs the exchange: order throughput and latency with every
probe attached to the trading API and PostgreSQL vs none, in the same run,
interleaved (none, probes, none, probes, ...); and the probes' start-up time.

    sudo .venv/bin/python benchmarks/bpf_overhead.py [--rounds 3] [--seconds 10] [--json FILE]

Start-up is timed both ways: compiled by bcc (an empty cache of compiled programs)
and loaded from the cache, as a second session does. While the probes run, the
kernel's BPF statistics (kernel.bpf_stats_enabled) say what each program cost: how
often it ran and its nanoseconds per run.

It starts its own copy of the exchange and removes it afterwards. It prints
figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


def program_fds(session: BpfSession) -> dict[str, int]:
    """Each attached program of the session: name -> its fd in this process."""
    out = {}
    for probe, program in session._bpfs.items():
        funcs = getattr(program, "funcs", None)
        if funcs is not None:  # compiled by bcc
            out.update({f"{probe}:{n.decode()}": f.fd for n, f in funcs.items()})
        else:  # loaded from the cache
            for attached, name in zip(program._attached, program._names, strict=True):
                out[f"{probe}:{name}"] = attached.prog_fd
    return out


def run_stats(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(runs, nanoseconds) of each program so far (kernel.bpf_stats_enabled)."""
    out = {}
    for name, fd in fds.items():
        info = dict(
            line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
        )
        out[name] = (int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0)))
    return out


def startups(scope, times: int) -> tuple[list[float], list[float]]:
    """Start-up of every probe, compiled (empty cache) and loaded from the cache."""
    compiled, cached = [], []
    previous = os.environ.get("CHAOS_BPF_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        try:
            for i in range(times):
                os.environ["CHAOS_BPF_CACHE"] = f"{folder}/{i}"
                for out in (compiled, cached):
                    start = time.monotonic()
                    with BpfSession(pid=scope.pid, probes=PROBES, scope=scope) as session:
                        out.append(time.monotonic() - start)
                        if not session.support.available:
                            sys.exit(f"BPF is unavailable: {session.support.reason}")
        finally:
            if previous is None:
                os.environ.pop("CHAOS_BPF_CACHE", None)
            else:
                os.environ["CHAOS_BPF_CACHE"] = previous
    return compiled, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--startups", type=int, default=5, help="start-ups timed each way")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
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
        compiled, cached = startups(scope, args.startups)
        results: dict[str, list[tuple[float, float, float]]] = {"none": [], "probes": []}
        costs: dict[str, list[tuple[int, int]]] = {}
        stats = Path("/proc/sys/kernel/bpf_stats_enabled")
        stats_before = stats.read_text().strip()
        for _ in range(args.rounds):
            results["none"].append(
                summary(asyncio.run(closed_loop(url, args.seconds, args.workers)), args.seconds)
            )
            with BpfSession(pid=scope.pid, probes=PROBES, scope=scope) as session:
                fds = program_fds(session)
                stats.write_text("1")
                try:
                    before = run_stats(fds)
                    latencies = asyncio.run(closed_loop(url, args.seconds, args.workers))
                    after = run_stats(fds)
                finally:
                    stats.write_text(stats_before)
            results["probes"].append(summary(latencies, args.seconds))
            for name in fds:
                runs = after[name][0] - before[name][0]
                spent = after[name][1] - before[name][1]
                costs.setdefault(name, []).append((runs, spent))
        figures: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds}
        for name, rows in results.items():
            rate = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            figures[name] = {
                "orders_per_s": round(rate, 1),
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
            }
            print(
                f"{name:7} orders/s {rate:7.1f}   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({len(rows)} rounds of {args.seconds:g} s)"
            )
        none, probes = figures["none"], figures["probes"]
        figures["throughput_ratio"] = round(probes["orders_per_s"] / none["orders_per_s"], 4)
        figures["p99_ratio"] = round(probes["p99_ms"] / none["p99_ms"], 4)
        print(
            f"with probes: throughput x{figures['throughput_ratio']}, p99 x{figures['p99_ratio']}"
        )
        figures["startup_compiled_s"] = round(statistics.median(compiled), 3)
        figures["startup_cached_s"] = round(statistics.median(cached), 3)
        print(
            f"probe start-up, all {len(PROBES)} programs: compiled {figures['startup_compiled_s']:.3f} s, "
            f"from the cache (a second session) {figures['startup_cached_s']:.3f} s "
            f"(medians of {args.startups})"
        )
        per_program = {}
        total_ns = 0
        for name, rows in sorted(costs.items()):
            runs = sum(r for r, _ in rows)
            spent = sum(t for _, t in rows)
            total_ns += spent
            per_program[name] = {
                "runs_per_s": round(runs / (args.rounds * args.seconds), 1),
                "ns_per_run": round(spent / runs, 1) if runs else 0.0,
            }
            print(
                f"  {name:52} {per_program[name]['runs_per_s']:10.1f} runs/s "
                f"{per_program[name]['ns_per_run']:8.1f} ns/run"
            )
        figures["programs"] = per_program
        figures["bpf_cpu_share"] = round(total_ns / (args.rounds * args.seconds * 1e9), 5)
        print(f"  all programs: {figures['bpf_cpu_share'] * 100:.3f}% of one CPU")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
