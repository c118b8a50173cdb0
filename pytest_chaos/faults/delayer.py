"""A userspace packet delayer for kernels without sch_netem.

Bound to an NFQUEUE that a rule (with --queue-bypass, so traffic flows if this
process dies) feeds with the packets to delay. Each packet is held until its due
time, then accepted; due times never go backwards, so a flow is delayed without
being reordered. SIGTERM, SIGINT or a ``stop`` message accepts what is held and
exits.

It starts warm, before it is needed: ``--serve`` imports what it needs, says
``warm`` on its control socket (fd 0, a SOCK_SEQPACKET socket pair with pytest) and
waits. Its orders then come as one message: the settings as JSON, with the target's
network namespace as a file descriptor (SCM_RIGHTS). It enters the namespace, binds
the queue and says ``ready``, so a delay is in force a few milliseconds after it is
asked for instead of after a Python start-up. A warm delayer whose pytest dies
exits (end of file on its socket); one already delaying keeps delaying, as every
other fault stays in force, until the journal's undo stops it.

    python -m pytest_chaos.faults.delayer --serve
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import json
import os
import random
import select
import signal
import socket
import sys
import time
from typing import Any

_CLONE_NEWNET = 0x40000000


class _Stop(Exception):
    """SIGTERM or SIGINT: accept what is held and exit."""


def run(
    queue: int,
    delay_s: float,
    jitter_s: float,
    seed: int | None = None,
    control: socket.socket | None = None,
) -> int:
    """Delay what the queue receives until stopped; say ``ready`` on ``control``
    (else on stdout) once bound."""
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
    watched: list[Any] = [fd]
    if control is not None:
        control.sendall(b"ready")
        watched.append(control)
    else:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
    try:
        while True:
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
            timeout = min(1.0, held[0][0] - now) if held else 1.0
            try:
                readable, _, _ = select.select(watched, [], [], max(0.0, timeout))
            except InterruptedError:
                continue
            if control is not None and control in readable:
                message = control.recv(64)
                if message == b"stop":
                    break
                if not message:
                    # pytest is gone: the fault stays until the journal's undo stops us.
                    watched.remove(control)
            if fd in readable:
                nfq.run(block=False)
    except _Stop:
        pass
    finally:
        while held:
            heapq.heappop(held)[2].accept()
        nfq.unbind()
    return 0


def serve(control: socket.socket) -> int:
    """Wait warm for one order on ``control``, then delay as it says."""
    import netfilterqueue  # noqa: F401 - imported now, so the order finds it loaded

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pytest's Ctrl-C is pytest's to handle
    control.sendall(b"warm")
    message, fds, _flags, _addr = socket.recv_fds(control, 4096, 1)
    if not message:
        return 0  # pytest went away before it needed us
    try:
        order = json.loads(message)
        if not fds:
            raise ValueError("no network namespace came with the order")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fds[0], _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        os.close(fds[0])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        return run(
            int(order["queue"]),
            float(order["delay_ms"]) / 1000.0,
            float(order.get("jitter_ms", 0.0)) / 1000.0,
            order.get("seed"),
            control=control,
        )
    except Exception as exc:  # noqa: BLE001 - said to pytest, which raises it
        control.sendall(f"error: {type(exc).__name__}: {exc}".encode())
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help="take orders on fd 0 (pytest's)")
    parser.add_argument("--queue", type=int)
    parser.add_argument("--delay-ms", type=float)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(socket.socket(fileno=0))
    if args.queue is None or args.delay_ms is None:
        parser.error("give --serve, or --queue and --delay-ms")
    return run(args.queue, args.delay_ms / 1000.0, args.jitter_ms / 1000.0, args.seed)


if __name__ == "__main__":
    sys.exit(main())
