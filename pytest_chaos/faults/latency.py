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
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, EnvironmentProblem, FaultError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault, undoer
from ..targets import linux
from ..targets.cgroup import OwnCgroup, own_cgroup_path
from ..targets.compose import Service
from ..targets.netns import NetNamespace, open_netns, scratch_netlink_socket
from ..units import parse_duration
from .base import Effect, FaultHandle, JournalSlot, journaled, journaled_service, running_pid
from .network import _peer_addresses, qdisc_session, qdisc_stats, root_qdisc_fault

if TYPE_CHECKING:
    from ..chaos import Chaos

METHODS = ("auto", "netem", "nfqueue")
CHAIN_PREFIX = "PYTEST_CHAOS_"


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
            packets = _chain_packets(ns, self._chain)
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


def netem_available() -> bool:
    """Whether the kernel has sch_netem. Asked in a network namespace of our own,
    made for the question and gone after it: a netem qdisc on its loopback either
    works or netlink answers ENOENT (the kind is unknown). Nothing else is touched."""
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
    addresses = _peer_addresses(peers)
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
        target=service.name,
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
        with _nfqueue(service, pid, handle):
            yield handle


# -- netem ------------------------------------------------------------------------------


@contextmanager
def _netem(service: Service, handle: LatencyHandle, interface: str) -> Iterator[None]:
    delay_us, jitter_us = int(handle.delay_s * 1e6), int(handle.jitter_s * 1e6)
    with root_qdisc_fault(service, interface, handle.describe(), handle) as (ipr, index):
        if not handle.peers:
            ipr.tc("add", "netem", index, handle="1:", delay=delay_us, jitter=jitter_us)
        else:
            # Band 3 of a prio qdisc gets the netem; u32 filters send the peers there.
            ipr.tc("add", "prio", index, handle="1:", bands=3)
            ipr.tc(
                "add", "netem", index, handle="30:", parent="1:3", delay=delay_us, jitter=jitter_us
            )
            for address in handle.peers.values():
                hex_ip = "".join(f"{int(part):02x}" for part in address.split("."))
                ipr.tc(
                    "add-filter",
                    "u32",
                    index,
                    parent="1:",
                    prio=1,
                    protocol=0x0800,
                    target="1:3",
                    keys=[f"0x{hex_ip}/0xffffffff+16"],
                )
        handle.applied_at = time.monotonic()
        yield
    handle.undone_at = time.monotonic()


# -- NFQUEUE fallback -------------------------------------------------------------------


def _iptables(ns: NetNamespace, *args: str) -> str:
    return ns.run(["iptables", "-w", "5", "-t", "mangle", *args])


def _remove_chain(ns: NetNamespace, chain: str) -> bool:
    listed = _iptables(ns, "-S")
    if f"-N {chain}" not in listed:
        return False
    while f"-A OUTPUT -j {chain}" in _iptables(ns, "-S", "OUTPUT"):
        _iptables(ns, "-D", "OUTPUT", "-j", chain)
    _iptables(ns, "-F", chain)
    _iptables(ns, "-X", chain)
    return True


def _chain_packets(ns: NetNamespace, chain: str) -> int:
    """Packets our chain's rules sent to the queue so far (iptables counters)."""
    listed = _iptables(ns, "-L", chain, "-v", "-x", "-n").splitlines()[2:]
    return sum(int(line.split()[0]) for line in listed if line.split())


def _has_mangle_table(ns: NetNamespace) -> bool:
    """Whether nftables holds iptables' mangle table (iptables-nft makes it on first
    use; with iptables-legacy the table lives outside nftables and is never removed)."""
    return "table ip mangle" in ns.run(["nft", "list", "tables"]).splitlines()


def _drop_mangle_table_if_ours(ns: NetNamespace, existed: bool) -> bool:
    """Leave the namespace as found: the mangle table that our rule made iptables-nft
    create goes once it holds no rule (anyone else's rule keeps it)."""
    if existed or not _has_mangle_table(ns):
        return False
    if any(not line.startswith("-P ") for line in _iptables(ns, "-S").splitlines()):
        return False
    ns.run(["nft", "delete", "table", "ip", "mangle"])
    return True


@contextmanager
def _nfqueue(service: Service, pid: int, handle: LatencyHandle) -> Iterator[None]:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            "the kernel has no netem and the NFQUEUE fallback needs the netfilterqueue package: "
            "apt-get install libnetfilter-queue-dev, then pip install 'pytest-chaos[nfqueue]'."
        ) from None
    journal = service.project.journal
    chain = f"{CHAIN_PREFIX}{journal.run_id if journal else 'NORUN'}_{secrets.token_hex(2)}".upper()
    handle._chain = chain
    queue = 1000 + secrets.randbelow(60000)
    # The delayer runs in a cgroup of ours, named in the entry before it starts.
    group = OwnCgroup(own_cgroup_path(f"pytest-chaos-delayer-{chain.lower()}"))
    with open_netns(pid, service.name) as ns:
        existed = _has_mangle_table(ns)
        data = {"chain": chain, "mangle_existed": existed, "cgroup": str(group.path)}
        with journaled(service, "nfqueue-latency", handle.describe(), data) as undone:
            yield from _nfqueue_in(ns, service, handle, queue, chain, existed, group, undone)


def _nfqueue_in(
    ns: NetNamespace,
    service: Service,
    handle: LatencyHandle,
    queue: int,
    chain: str,
    existed: bool,
    group: OwnCgroup,
    undone: JournalSlot,
) -> Iterator[None]:
    proc: subprocess.Popen[str] | None = None
    try:
        group.create()
        proc = subprocess.Popen(
            [
                *group.exec_prefix(),
                "nsenter",
                f"--net=/proc/self/fd/{ns.fd}",
                sys.executable,
                "-m",
                "pytest_chaos.faults.delayer",
                "--queue",
                str(queue),
                "--delay-ms",
                str(handle.delay_s * 1000),
                "--jitter-ms",
                str(handle.jitter_s * 1000),
            ],
            pass_fds=(ns.fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        handle.delayer_pid = proc.pid
        ready = proc.stdout.readline().strip() if proc.stdout else ""
        if ready != "ready":
            said = proc.stderr.read().strip() if proc.stderr else ""
            raise FaultError(f"the packet delayer did not start: {said or 'no output'}")
        _iptables(ns, "-N", chain)
        targets: list[str | None] = list((handle.peers or {}).values()) or [None]
        for address in targets:
            rule = ["-A", chain, "-o", "eth0"]
            if address is not None:
                rule += ["-d", address]
            _iptables(ns, *rule, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")
        _iptables(ns, "-I", "OUTPUT", "-j", chain)
        handle.applied_at = time.monotonic()
        yield
    finally:
        handle.keep_effect()
        with contextlib.suppress(FaultError):
            _remove_chain(ns, chain)
        handle.lifted_at = time.monotonic()
        if proc is not None:
            _stop(proc)
        group.stop_all()
        group.remove()
        if f"-N {chain}" in _iptables(ns, "-S"):
            raise FaultError(f"iptables chain {chain} is still in {service.name}'s namespace.")
        _drop_mangle_table_if_ours(ns, existed)
        handle.undone_at = time.monotonic()
        undone()


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@undoer("nfqueue-latency")
def _undo_nfqueue(data: dict[str, Any]) -> str:
    done = []
    service = journaled_service(data)
    pid_1 = running_pid(service)
    if pid_1 is not None:
        with open_netns(pid_1, service.name) as ns:
            if _remove_chain(ns, str(data["chain"])):
                done.append(f"removed iptables chain {data['chain']}")
            if _drop_mangle_table_if_ours(ns, bool(data.get("mangle_existed", True))):
                done.append("removed the empty mangle table it made")
    if "cgroup" in data:
        group = OwnCgroup(str(data["cgroup"]))
        if group.stop_all():
            done.append("stopped the delayer")
        if group.remove():
            done.append(f"removed cgroup {group.path}")
    pid = int(data.get("pid", 0))  # an entry of an earlier version
    if pid > 1 and linux.is_alive(pid, str(data.get("start", ""))):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        done.append(f"stopped the delayer (pid {pid})")
    if not done and not data.get("applied"):
        return "the delay was never applied: nothing to undo"
    return "; ".join(done) or "nothing was left"


@fault("latency")
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
    kernel has it, else the NFQUEUE delayer; ``handle.method`` says which."""
    check_delay(delay, jitter)
    target = chaos.service(service)
    others = [chaos.peer(p) for p in peers or []]
    return latency(target, delay, jitter=jitter, peers=others, method=method)
