"""How fast does the schedule search find and shrink a combined-fault weakness?

Runs tests/schedule/exchange_search.py, each run a pytest of its own (its own stack),
once per seed against the exchange with the weakness cache-idempotency and, with
``--healthy``, once per seed against the healthy exchange; prints per run the
examples run, examples per minute, time and examples to find, runs and time to
shrink, the minimal schedule and how often it failed its re-runs. It asserts nothing.

    sudo .venv/bin/python benchmarks/schedule_search.py [--seeds 1,2,3] [--healthy]
        [--max-examples 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "tests/schedule/exchange_search.py"


def run(seed: int, weaken: str | None, max_examples: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "search.xml"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXCHANGE_", "SCHEDULE_"))}
        env["SCHEDULE_SEED"] = str(seed)
        env["SCHEDULE_MAX_EXAMPLES"] = str(max_examples)
        command = [
            sys.executable,
            "-m",
            "pytest",
            SEARCH,
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={xml}",
        ]
        if weaken:
            command.append(f"--exchange-weaken={weaken}")
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        wall = time.monotonic() - started
        figures: dict[str, object] = {
            "seed": seed,
            "weakness": weaken or "none",
            "exit": done.returncode,
            "wall_s": round(wall, 1),
        }
        if xml.exists():
            for p in ET.parse(xml).iter("property"):  # noqa: S314 - pytest wrote it
                name = p.get("name", "")
                if name.startswith("schedule_"):
                    figures[name.removeprefix("schedule_")] = p.get("value")
        else:
            figures["output"] = (done.stdout + done.stderr)[-2000:]
        return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--healthy", action="store_true", help="also search the healthy exchange")
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for weaken in ["cache-idempotency", *([None] if args.healthy else [])]:
        for seed in seeds:
            figures = run(seed, weaken, args.max_examples)
            results.append(figures)
            print(
                f"{figures['weakness']:<18} seed {seed:<10} exit {figures['exit']}  "
                f"examples {figures.get('examples', '?'):>3} runs {figures.get('runs', '?'):>3}  "
                f"{figures.get('runs_per_minute', '?')}/min (runs)  "
                f"found after {figures.get('found_after_examples', '-')} ex "
                f"{figures.get('found_after_s', '-')} s  shrink {figures.get('shrink_runs', '-')} "
                f"runs {figures.get('shrink_s', '-')} s  reproduced {figures.get('reproduced', '-')}"
                f"  wall {figures['wall_s']} s",
                flush=True,
            )
            if figures.get("replay"):
                print(f"    minimal: {figures['replay']}", flush=True)
            if "output" in figures:
                print(figures["output"], flush=True)
    rates = [float(r["runs_per_minute"]) for r in results if r.get("runs_per_minute")]
    if rates:
        print(
            f"runs per minute: median {statistics.median(rates):.2f}, "
            f"{min(rates):.2f}-{max(rates):.2f} over {len(rates)} searches"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
