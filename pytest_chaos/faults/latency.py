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

import atexit
import contextlib
import errno
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ChaosError, ConfigurationError, EnvironmentProblem, FaultError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault, undoer
from ..targets import linux
from ..targets.cgroup import OwnCgroup
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
    addresses = _peer_addresses(service, peers)
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


class _Delayer:
    """A delayer process started ahead of need (see ``delayer.py``): warm, it waits for
    its order on a socket pair with pytest; it exits if pytest goes first. What it
    writes to stderr (a crash's traceback) goes to an unnamed file, for the error
    message: a pipe nobody reads could fill and stall it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_chaos.faults.delayer", "--serve"],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=self.errors,
                start_new_session=True,
            )
        self.control = ours
        self._stopped = False

    def wait_warm(self, timeout: float = 30.0) -> None:
        self._expect(b"warm", timeout, "the packet delayer did not start")

    def start(self, ns: NetNamespace, order: dict[str, Any], timeout: float = 10.0) -> None:
        """Send the order with the namespace; return once the delayer is bound."""
        socket.send_fds(self.control, [json.dumps(order).encode()], [ns.fd])
        self._expect(b"ready", timeout, "the packet delayer did not bind its queue")

    def _expect(self, word: bytes, timeout: float, failure: str) -> None:
        self.control.settimeout(timeout)
        try:
            said = self.control.recv(4096)
        except (TimeoutError, OSError):
            said = b""
        if said == word:
            return
        reason = said.decode("utf-8", "replace").removeprefix("error: ").strip()
        if not reason:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.errors.seek(0)
            last = self.errors.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            code = self.proc.returncode
            silent = f"it said nothing within {timeout:g} s"
            reason = " ".join(last) or (silent if code is None else f"it exited ({code})")
        self.stop()
        raise FaultError(f"{failure}: {reason}")

    def stop(self) -> None:
        """Accept what it holds and exit (SIGKILL if it ignores that for 10 s)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError):
            self.control.sendall(b"stop")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.control.close()
        self.errors.close()


_spare_lock = threading.Lock()
_spare: _Delayer | None = None


def prewarm() -> None:
    """Start a delayer ahead of the next NFQUEUE latency fault, if there is none (it
    costs a waiting Python process; it exits with pytest)."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare.proc.poll() is not None:
            _spare = _Delayer()


def prewarm_delayer() -> None:
    """Where latency will take the NFQUEUE path (root, no netem, netfilterqueue
    installed), have a delayer waiting: called as a chaos test starts."""
    import importlib.util

    if os.geteuid() != 0 or importlib.util.find_spec("netfilterqueue") is None:
        return
    try:
        if netem_available():
            return
    except ChaosError:
        return
    prewarm()


def _take_delayer() -> _Delayer:
    global _spare
    with _spare_lock:
        taken, _spare = _spare, None
    if taken is None or taken.proc.poll() is not None:
        taken = _Delayer()
    taken.wait_warm()
    return taken


@atexit.register
def _drop_spare() -> None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        with contextlib.suppress(Exception):
            spare.stop()


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
    # The delayer was started ahead of need: its pid and start time (its identity) go
    # into the entry before it is given its order, so an undo after pytest's death
    # stops that very process.
    delayer = _take_delayer()
    try:
        with open_netns(pid, service.name) as ns:
            existed = _has_mangle_table(ns)
            data = {
                "chain": chain,
                "mangle_existed": existed,
                "pid": delayer.proc.pid,
                "start": linux.start_time(delayer.proc.pid),
            }
            # Rules and a process of ours: a crash of the machine takes them along.
            with journaled(
                service, "nfqueue-latency", handle.describe(), data, durable=False
            ) as undone:
                yield from _nfqueue_in(ns, service, handle, queue, chain, existed, delayer, undone)
    finally:
        delayer.stop()  # once more where the undo did not get that far: a no-op otherwise


def _nfqueue_in(
    ns: NetNamespace,
    service: Service,
    handle: LatencyHandle,
    queue: int,
    chain: str,
    existed: bool,
    delayer: _Delayer,
    undone: JournalSlot,
) -> Iterator[None]:
    try:
        handle.delayer_pid = delayer.proc.pid
        delayer.start(
            ns,
            {
                "queue": queue,
                "delay_ms": handle.delay_s * 1000,
                "jitter_ms": handle.jitter_s * 1000,
            },
        )
        rules = ["*mangle", f":{chain} - [0:0]"]
        targets: list[str | None] = list((handle.peers or {}).values()) or [None]
        for address in targets:
            match = f" -d {address}" if address is not None else ""
            rules.append(f"-A {chain} -o eth0{match} -j NFQUEUE --queue-num {queue} --queue-bypass")
        rules += [f"-I OUTPUT -j {chain}", "COMMIT", ""]
        # One transaction: the chain and the jump to it are in force together.
        ns.run(["iptables-restore", "-w", "5", "--noflush"], input_text="\n".join(rules))
        handle.applied_at = time.monotonic()
        yield
    finally:
        handle.keep_effect()
        with contextlib.suppress(FaultError):
            _remove_chain(ns, chain)
        handle.lifted_at = time.monotonic()
        delayer.stop()
        if f"-N {chain}" in _iptables(ns, "-S"):
            raise FaultError(f"iptables chain {chain} is still in {service.name}'s namespace.")
        _drop_mangle_table_if_ours(ns, existed)
        prewarm()  # for the next one
        handle.undone_at = time.monotonic()
        undone()


@undoer("nfqueue-latency")
def _undo_nfqueue(data: dict[str, Any]) -> str:
    done = []
    # Ours on this machine first, whatever becomes of the engine below: the delayer
    # stopped, its queue is bypassed (--queue-bypass) and packets flow undelayed.
    if "cgroup" in data:
        group = OwnCgroup(str(data["cgroup"]))
        if group.stop_all():
            done.append("stopped the delayer")
        if group.remove():
            done.append(f"removed cgroup {group.path}")
    pid = int(data.get("pid", 0))
    if linux.stop_process(pid, str(data.get("start", ""))):
        done.append(f"stopped the delayer (pid {pid})")
    service = journaled_service(data)  # its engine unreachable: the entry stays
    pid_1 = running_pid(service)
    if pid_1 is not None:
        with open_netns(pid_1, service.name) as ns:
            if _remove_chain(ns, str(data["chain"])):
                done.append(f"removed iptables chain {data['chain']}")
            if _drop_mangle_table_if_ours(ns, bool(data.get("mangle_existed", True))):
                done.append("removed the empty mangle table it made")
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
