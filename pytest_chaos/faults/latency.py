"""Latency (with optional jitter) on what a service sends, toward chosen peers or
all traffic.

Where the kernel has sch_netem, a netem qdisc does it (for chosen peers, under a
prio qdisc with u32 filters). Where it does not (netlink answers ENOENT for the
netem kind, as on this project's CI machines), the packets go through an NFQUEUE,
fed by an iptables rule inside the namespace and emptied by a delayer process of
ours (``pytest_chaos.faults.delayer``) that holds each packet for the delay. The
rule has --queue-bypass: should the delayer die, traffic flows undelayed. The
handle says which path is in force.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, EnvironmentProblem
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault
from ..targets.compose import Service
from ..targets.netns import open_netns, scratch_netlink_socket
from ..units import parse_duration
from .base import Effect, FaultHandle
from .network import peer_addresses
from .nfqueue import chain_packets, queued, require_netfilterqueue
from .qdisc import qdisc_session, qdisc_stats, root_major, root_qdisc_fault

if TYPE_CHECKING:
    from ..chaos import Chaos

METHODS = ("auto", "netem", "nfqueue")


@dataclass
class LatencyHandle(FaultHandle):
    delay_s: float = 0.0
    jitter_s: float = 0.0
    peers: dict[str, str] | None = None
    #: "netem" or "nfqueue": the path in force.
    method: str = ""
    delayer_pid: int = 0
    _pid: int = 0
    _interface: str = "eth0"
    _chain: str = ""

    def measure_effect(self) -> Effect:
        if self.method == "netem":
            with qdisc_session(self._pid, self.target, self._interface) as (ipr, index):
                packets = qdisc_stats(ipr, index, "netem")["packets"]
            return Effect(packets > 0, f"{packets} packets delayed by netem")
        with open_netns(self._pid, self.target) as ns:
            packets = chain_packets(ns, self._chain)
        return Effect(packets > 0, f"{packets} packets queued to the delayer")

    def describe(self) -> str:
        whom = ", ".join(self.peers or {}) or "all traffic"
        jitter = f" ±{self.jitter_s * 1000:g} ms" if self.jitter_s else ""
        return f"latency {self.target} -> {whom} {self.delay_s * 1000:g} ms{jitter}"

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "delay_ms": round(self.delay_s * 1000, 3),
            "jitter_ms": round(self.jitter_s * 1000, 3),
            "method": self.method,
        }


def check_delay(delay: float | str, jitter: float | str) -> tuple[float, float]:
    delay_s = parse_duration(delay, name="delay")
    if delay_s > 10:
        raise ConfigurationError(f"delay must be at most 10 s, got {delay!r}.")
    jitter_s = 0.0 if jitter in (0, 0.0, "0") else parse_duration(jitter, name="jitter")
    if jitter_s > delay_s:
        raise ConfigurationError(f"jitter ({jitter!r}) must not exceed the delay ({delay!r}).")
    return delay_s, jitter_s


@functools.cache
def netem_available() -> bool:
    """Whether the kernel has sch_netem. Asked in a network namespace of our own,
    made for the question and gone after it: a netem qdisc on its loopback either
    works or netlink answers ENOENT (the kind is unknown). Nothing else is touched.
    Asked once per process: a kernel does not gain or lose a qdisc kind meanwhile."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    sock = scratch_netlink_socket()
    with contextlib.closing(IPRoute(fileno=sock.detach())) as ipr:
        try:
            ipr.tc("add", "netem", 1, handle="1:", delay=1000)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return False
            raise
    return True


@contextmanager
def latency(
    service: Service,
    delay: float | str,
    *,
    jitter: float | str = 0,
    peers: Sequence[Service | str] = (),
    method: str = "auto",
    interface: str = "eth0",
) -> Iterator[LatencyHandle]:
    """Delay what ``service`` sends (to ``peers``, or everything) by ``delay``."""
    delay_s, jitter_s = check_delay(delay, jitter)
    if method not in METHODS:
        raise ConfigurationError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    addresses = peer_addresses(service, peers)
    pid = service.init_pid()
    if method == "auto":
        method = "netem" if netem_available() else "nfqueue"
    elif method == "netem" and not netem_available():
        raise EnvironmentProblem(
            "this kernel has no sch_netem (netlink: ENOENT for kind netem); use method='auto' "
            "or 'nfqueue' for the packet-delaying fallback, or load the module "
            "(modprobe sch_netem)."
        )
    handle = LatencyHandle(
        kind="latency",
        target=service.label,
        delay_s=delay_s,
        jitter_s=jitter_s,
        peers=addresses,
        method=method,
    )
    handle._pid, handle._interface = pid, interface
    if method == "netem":
        with _netem(service, handle, interface):
            yield handle
    else:
        with _nfqueue(service, handle):
            yield handle


# -- netem ------------------------------------------------------------------------------


@contextmanager
def _netem(service: Service, handle: LatencyHandle, interface: str) -> Iterator[None]:
    delay_us, jitter_us = int(handle.delay_s * 1e6), int(handle.jitter_s * 1e6)
    root = f"{root_major(service):x}:"  # the run's: a sweep knows it by that
    with root_qdisc_fault(service, interface, handle.describe(), handle) as (ipr, index):
        if not handle.peers:
            ipr.tc("add", "netem", index, handle=root, delay=delay_us, jitter=jitter_us)
        else:
            # Band 3 of a prio qdisc gets the netem; u32 filters send the peers there.
            ipr.tc("add", "prio", index, handle=root, bands=3)
            ipr.tc(
                "add",
                "netem",
                index,
                handle="30:",
                parent=f"{root}3",
                delay=delay_us,
                jitter=jitter_us,
            )
            for address in handle.peers.values():
                hex_ip = "".join(f"{int(part):02x}" for part in address.split("."))
                ipr.tc(
                    "add-filter",
                    "u32",
                    index,
                    parent=root,
                    prio=1,
                    protocol=0x0800,
                    target=f"{root}3",
                    keys=[f"0x{hex_ip}/0xffffffff+16"],
                )
        handle.applied_at = time.monotonic()
        yield
    handle.undone_at = time.monotonic()


# -- NFQUEUE fallback -------------------------------------------------------------------


@contextmanager
def _nfqueue(service: Service, handle: LatencyHandle) -> Iterator[None]:
    require_netfilterqueue("latency on a kernel without netem")
    targets: list[str | None] = list((handle.peers or {}).values()) or [None]
    order = {"delay_ms": handle.delay_s * 1000, "jitter_ms": handle.jitter_s * 1000}
    with queued(
        service,
        handle,
        journal_kind="nfqueue-latency",
        order=order,
        matches=[f"-o eth0 -d {address}" if address else "-o eth0" for address in targets],
    ) as worker:
        handle.delayer_pid = worker.proc.pid
        handle._chain = worker.chain
        yield


@fault(
    "latency",
    grid={"delay": ("50ms", "100ms", "200ms", "400ms", "800ms")},
    journal=("qdisc", "nfqueue-latency"),
    leaves=("qdisc", "iptables-chain"),
    requires=("root", "this-kernel"),
    example="chaos.latency({service}, '30ms', peers=[{peer}])",
)
def _chaos_latency(
    chaos: Chaos,
    service: str,
    delay: float | str,
    *,
    jitter: float | str = 0,
    peers: list[str] | None = None,
    method: str = "auto",
) -> AbstractContextManager[LatencyHandle]:
    """Delay what ``service`` sends (to ``peers``, or everything): netem where the
    kernel has it, else an NFQUEUE delayer process of ours, one waiting warm from the
    start of each chaos test (``handle.method`` says which). Undo: the qdisc removed,
    or the iptables chain removed and the delayer stopped."""
    check_delay(delay, jitter)
    target = chaos.service(service)
    others = [chaos.peer(p) for p in peers or []]
    return latency(target, delay, jitter=jitter, peers=others, method=method)
