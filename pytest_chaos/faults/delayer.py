"""A userspace packet delayer for kernels without sch_netem.

Run inside the target's network namespace, bound to an NFQUEUE that an iptables
rule (with --queue-bypass, so traffic flows if this process dies) feeds with the
packets to delay. Each packet is held until its due time, then accepted; due times
never go backwards, so a flow is delayed without being reordered. SIGTERM accepts
what is held and exits.

    python -m pytest_chaos.faults.delayer --queue N --delay-ms 100 [--jitter-ms 10]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import sys
import time
from typing import Any


class _Stop(Exception):
    """SIGTERM or SIGINT: accept what is held and exit."""


def run(queue: int, delay_s: float, jitter_s: float, seed: int | None = None) -> int:
    from netfilterqueue import NetfilterQueue

    rng = random.Random(seed)  # noqa: S311 - jitter, not secrets
    held: list[tuple[float, int, Any]] = []
    order = itertools.count()
    last_due = 0.0

    def hold(packet: Any) -> None:
        nonlocal last_due
        packet.retain()
        due = time.monotonic() + max(0.0, delay_s + rng.uniform(-jitter_s, jitter_s))
        last_due = max(due, last_due)
        heapq.heappush(held, (last_due, next(order), packet))

    def stop(_signum: int, _frame: object) -> None:
        # Raising (not just flagging) ends a select that would otherwise be retried.
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nfq = NetfilterQueue()
    nfq.bind(queue, hold, max_len=65536)
    fd = nfq.get_fd()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        while True:
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
            timeout = min(1.0, held[0][0] - now) if held else 1.0
            try:
                readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
    except _Stop:
        pass
    finally:
        while held:
            heapq.heappop(held)[2].accept()
        nfq.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    return run(args.queue, args.delay_ms / 1000.0, args.jitter_ms / 1000.0, args.seed)


if __name__ == "__main__":
    sys.exit(main())
