"""The README's benchmark tables, from the JSON the benchmarks write:

    .venv/bin/python benchmarks/tables.py --faults faults.json --bpf bpf.json

Prints Markdown; beside each figure, the target of issue 14 and whether it is met.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CLI_USED = {
    "kill (SIGKILL, restart policy)": "`docker kill -s KILL`, `docker start`",
    "pause": "`docker pause` / `unpause`",
    "stop / start": "`docker stop -t 1` / `start`",
    "partition (reject)": "`nsenter -n iptables -I/-D ... REJECT`",
    "loss 10%": "`nsenter -n iptables -m statistic`",
    "bandwidth (tbf)": "`nsenter -n tc qdisc add/del`",
    "latency 50 ms": "`tc netem`: not in this kernel",
    "latency 50 ms, no warm delayer": "`tc netem`: not in this kernel",
    "cpu quota 0.5": "`docker update --cpu-quota`",
    "memory cap 400m": '`docker update` cannot set "unlimited" back',
    "io throttle": "`docker update` has no device throttles",
}

#: fault -> (most ms, least times faster than the CLI or None)
TARGETS = {
    "kill (SIGKILL, restart policy)": (5.0, 10.0),
    "partition (reject)": (5.0, 3.0),
    "loss 10%": (5.0, 3.0),
    "latency 50 ms": (30.0, None),
    "cpu quota 0.5": (5.0, None),
    "memory cap 400m": (5.0, None),
    "io throttle": (5.0, None),
}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g} ms"


def faults_table(data: dict[str, Any]) -> str:
    lines = [
        "| fault | runs | apply | undo | CLI apply | CLI undo | CLI used | x faster | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["faults"]:
        name = row["fault"]
        apply_ms, cli = row["apply_ms"], row["cli_apply_ms"]
        faster = f"x{cli / apply_ms:.1f}" if cli else "-"
        target = "-"
        if name in TARGETS:
            most, times = TARGETS[name]
            met = apply_ms <= most and (
                times is None or (cli is not None and cli / apply_ms >= times)
            )
            wanted = f"<= {most:g} ms" + (f", >= x{times:g}" if times else "")
            target = f"{wanted}: {'met' if met else 'not met'}"
        lines.append(
            f"| {name} | {row['runs']} | {_ms(apply_ms)} | {_ms(row['undo_ms'])} | {_ms(cli)} | "
            f"{_ms(row['cli_undo_ms'])} | {CLI_USED.get(name, '')} | {faster} | {target} |"
        )
    return "\n".join(lines)


def latency_table(data: dict[str, Any]) -> str:
    by: dict[int, dict[int, dict[str, Any]]] = {}
    for row in data.get("latency", []):
        by.setdefault(row["injected_ms"], {})[row["connections"]] = row
    lines = [
        "| injected | 1 connection: median (error), p95 | 10 connections: median (error), p95 |",
        "|---|---|---|",
    ]
    for injected, rows in sorted(by.items()):
        cells = [
            f"{r['added_median_ms']} ms ({r['error_median_ms']:+}), {r['added_p95_ms']} ms"
            for r in (rows.get(1), rows.get(10))
            if r is not None
        ]
        lines.append(f"| {injected} ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bpf_table(data: dict[str, Any]) -> str:
    none, probes = data["none"], data["probes"]
    throughput = data["throughput_ratio"]
    p99 = data["p99_ratio"]
    lines = [
        "| | orders/s | p50 | p99 |",
        "|---|---|---|---|",
        f"| no probes | {none['orders_per_s']} | {none['p50_ms']} ms | {none['p99_ms']} ms |",
        f"| all probes | {probes['orders_per_s']} (x{throughput}) | {probes['p50_ms']} ms | "
        f"{probes['p99_ms']} ms (x{p99}) |",
        "",
        f"Throughput with every probe: x{throughput} of none (target >= x0.97: "
        f"{'met' if throughput >= 0.97 else 'not met'}); p99 x{p99} (target <= x1.10: "
        f"{'met' if p99 <= 1.10 else 'not met'}). Start-up of all programs: "
        f"{data['startup_compiled_s']} s compiled, {data['startup_cached_s']} s from the cache "
        f"(target <= 0.5 s on a second session: "
        f"{'met' if data['startup_cached_s'] <= 0.5 else 'not met'}). The programs ran "
        f"{data['bpf_cpu_share'] * 100:.2f}% of one CPU.",
        "",
        "| program | runs/s | ns/run |",
        "|---|---|---|",
    ]
    for name, row in sorted(data["programs"].items(), key=lambda kv: -kv[1]["runs_per_s"]):
        if row["runs_per_s"]:
            lines.append(f"| `{name}` | {row['runs_per_s']:g} | {row['ns_per_run']:g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--faults", type=Path, help="JSON of benchmarks/faults.py --json")
    parser.add_argument("--bpf", type=Path, help="JSON of benchmarks/bpf_overhead.py --json")
    args = parser.parse_args()
    if args.faults:
        data = json.loads(args.faults.read_text())
        print(faults_table(data), end="\n\n")
        if data.get("latency"):
            print(latency_table(data), end="\n\n")
    if args.bpf:
        print(bpf_table(json.loads(args.bpf.read_text())))


if __name__ == "__main__":
    main()
