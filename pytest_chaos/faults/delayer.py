"""The packet worker: a process of ours that decides the fate of each packet an NFQUEUE
gives it, by a policy (delay it, hold some back so that others overtake them, send a
copy, drop it, answer it in the sender's place).

Bound to an NFQUEUE that a rule (with --queue-bypass, so traffic flows if this
process dies) feeds with the packets to act on. SIGTERM, SIGINT or a ``stop`` message
accepts what is held and exits; a ``stats`` message is answered with the policy's
counters (JSON).

It starts warm, before it is needed: ``--serve`` imports what it needs, says ``warm``
on its control socket (fd 0, a SOCK_SEQPACKET socket pair with pytest) and waits. Its
orders then come as one message: the settings as JSON (``policy``, a ``module:Class``
of :class:`Policy`, default :class:`Delay`), with the target's network namespace as a
file descriptor (SCM_RIGHTS). It enters the namespace, binds the queue and says
``ready``, so a fault is in force a few milliseconds after it is asked for instead of
after a Python start-up. A warm worker whose pytest dies exits (end of file on its
socket); one already working keeps working, as every other fault stays in force, until
the journal's undo stops it.

    python -m pytest_chaos.faults.delayer --serve
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import importlib
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
#: The firewall mark of the packets the worker sends itself (copies, answers): the
#: chain that feeds the queue lets them pass, or they would come back to it.
OWN_MARK = 0x6C0A


class _Stop(Exception):
    """SIGTERM or SIGINT: accept what is held and exit."""


class Policy:
    """What the worker does with each packet: the base holds each one until
    :meth:`due_at` says, then accepts it (:meth:`due_at` of now: at once). A policy may
    also drop a packet, or :meth:`send` packets of its own into the namespace."""

    def __init__(self, settings: dict[str, Any], rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.counts: dict[str, int] = {"packets": 0}
        self._held: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._raw: socket.socket | None = None

    # -- what a policy decides -------------------------------------------------------

    def on_packet(self, packet: Any, now: float) -> None:
        """Decide ``packet``'s fate (called once per packet, in arrival order)."""
        self.count("packets")
        self.hold(packet, self.due_at(now))

    def due_at(self, now: float) -> float:
        return now

    # -- what it can do --------------------------------------------------------------

    def hold(self, packet: Any, due: float) -> None:
        """Keep ``packet`` until ``due`` (a time.monotonic() reading), then accept it."""
        packet.retain()
        heapq.heappush(self._held, (due, next(self._order), packet))

    def send(self, datagram: bytes) -> None:
        """Send an IPv4 packet (header included) into the namespace, marked so the
        queue's own chain lets it pass."""
        if self._raw is None:
            self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, OWN_MARK)
        destination = socket.inet_ntoa(datagram[16:20])
        self._raw.sendto(datagram, (destination, 0))

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    # -- what the worker's loop asks -------------------------------------------------

    def release(self, now: float) -> float | None:
        """Accept what is due by ``now``; the next due time, or None if nothing is held."""
        while self._held and self._held[0][0] <= now:
            heapq.heappop(self._held)[2].accept()
        return self._held[0][0] if self._held else None

    def release_all(self) -> None:
        while self._held:
            heapq.heappop(self._held)[2].accept()


class Delay(Policy):
    """Hold each packet ``delay_ms`` (± ``jitter_ms``); due times never go backwards,
    so a flow is delayed without being reordered."""

    def __init__(self, settings: dict[str, Any], rng: random.Random) -> None:
        super().__init__(settings, rng)
        self.delay_s = float(settings["delay_ms"]) / 1000.0
        self.jitter_s = float(settings.get("jitter_ms", 0.0)) / 1000.0
        self._last_due = 0.0

    def due_at(self, now: float) -> float:
        due = now + max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))
        self._last_due = max(due, self._last_due)
        return self._last_due


def policy_class(name: str) -> type[Policy]:
    """The policy a ``module:Class`` name gives (refused unless it is one)."""
    module, _, attribute = name.partition(":")
    found = getattr(importlib.import_module(module), attribute, None)
    if not (isinstance(found, type) and issubclass(found, Policy)):
        raise ValueError(f"{name!r} is not a packet policy")
    return found


def run(queue: int, policy: Policy, control: socket.socket | None = None) -> int:
    """Work on what the queue receives until stopped; say ``ready`` on ``control``
    (else on stdout) once bound."""
    from netfilterqueue import NetfilterQueue

    def stop(_signum: int, _frame: object) -> None:
        # Raising (not just flagging) ends a select that would otherwise be retried.
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nfq = NetfilterQueue()
    nfq.bind(queue, lambda packet: policy.on_packet(packet, time.monotonic()), max_len=65536)
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
            due = policy.release(time.monotonic())
            timeout = 1.0 if due is None else min(1.0, due - time.monotonic())
            try:
                readable, _, _ = select.select(watched, [], [], max(0.0, timeout))
            except InterruptedError:
                continue
            if control is not None and control in readable:
                message = control.recv(64)
                if message == b"stop":
                    break
                if message == b"stats":
                    control.sendall(json.dumps(policy.counts).encode())
                elif not message:
                    # pytest is gone: the fault stays until the journal's undo stops us.
                    watched.remove(control)
            if fd in readable:
                nfq.run(block=False)
    except _Stop:
        pass
    finally:
        policy.release_all()
        nfq.unbind()
    return 0


def _import_fault_modules() -> None:
    """Import the fault modules now, while warm: a policy lives in its fault's module,
    and importing it when the order comes would delay the fault."""
    import pkgutil

    import pytest_chaos.faults as package

    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        try:
            importlib.import_module(module.name)
        except Exception:  # noqa: BLE001, S112 - its order, if one comes, says why
            continue


def serve(control: socket.socket) -> int:
    """Wait warm for one order on ``control``, then work as it says."""
    import netfilterqueue  # noqa: F401 - imported now, so the order finds it loaded

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pytest's Ctrl-C is pytest's to handle
    _import_fault_modules()
    control.sendall(b"warm")
    message, fds, _flags, _addr = socket.recv_fds(control, 4096, 1)
    if not message:
        return 0  # pytest went away before it needed us
    try:
        order = json.loads(message)
        if not fds:
            raise ValueError("no network namespace came with the order")
        kind = policy_class(str(order.get("policy", "pytest_chaos.faults.delayer:Delay")))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fds[0], _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        os.close(fds[0])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        policy = kind(order, random.Random(order.get("seed")))  # noqa: S311 - not secrets
        return run(int(order["queue"]), policy, control=control)
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
    settings = {"delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms}
    return run(args.queue, Delay(settings, random.Random(args.seed)))  # noqa: S311


if __name__ == "__main__":
    # Run as the package's module, not as __main__: a policy of a fault module
    # subclasses that module's Policy, which must be the one checked here.
    from pytest_chaos.faults.delayer import main as package_main

    sys.exit(package_main())
