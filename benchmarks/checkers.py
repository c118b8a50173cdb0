"""What checking a history costs: a history of N operations (adds by many clients,
some failing or unknown, reads along the way and a final read) is built, then each
checker is timed over it, best of several rounds.

    .venv/bin/python benchmarks/checkers.py [--operations 100000] [--rounds 5]

It prints figures; it asserts nothing. The goal: 100,000 operations checked in
under one second.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_chaos.observe.checkers import availability, set_full, unique_ids
from pytest_chaos.observe.history import History, Op, pair


def build(operations: int, clients: int = 32, reads_every: int = 5000) -> list[Op]:
    """A set history: ``operations`` adds and reads from ``clients`` clients,
    interleaved at random, a fault window in the middle third."""
    rng = random.Random(7)  # noqa: S311 - a reproducible workload, not a secret
    faults: list[str] = []
    history = History(faults=lambda: faults)
    pool = [history.client() for _ in range(clients)]
    present: list[int] = []
    for n in range(operations):
        faults[:] = (
            ["partition api | postgres"] if operations // 3 <= n < 2 * operations // 3 else []
        )
        client = rng.choice(pool)
        if n % reads_every == reads_every - 1:
            client.invoke("read")
            client.ok(list(present))
            continue
        client.invoke("add", n)
        roll = rng.random()
        if roll < 0.9:
            present.append(n)
            client.ok(n)
        elif roll < 0.97:
            client.fail("503: database unavailable")
        else:
            client.info("timed out")
    reader = history.client()
    reader.invoke("read")
    reader.ok(list(present))
    return history.events


def best(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    began = time.perf_counter()
    events = build(args.operations)
    built = time.perf_counter() - began
    ops = pair(events)
    print(f"{args.operations} operations ({len(events)} events), built in {built:.2f} s")
    rows = [
        ("pair (events -> operations)", lambda: pair(events)),
        ("set-full", lambda: set_full(ops)),
        ("unique-ids", lambda: unique_ids(ops, f="add")),
        ("availability", lambda: availability(ops)),
        (
            "all three from events",
            lambda: [c(pair(events)) for c in (set_full, unique_ids, availability)],
        ),
    ]
    for name, fn in rows:
        print(f"  {name:32} {best(fn, args.rounds) * 1000:8.1f} ms (best of {args.rounds})")


if __name__ == "__main__":
    main()
