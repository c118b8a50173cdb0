"""Packets through a worker of ours: an iptables chain of ours, in a container's network
namespace, sends the packets a fault chooses to an NFQUEUE, and a worker process
(``delayer.py``), entered into that namespace, decides each one's fate by the fault's
policy. Every rule that queues has --queue-bypass: should the worker die, the packets
flow as if the chain were not there. One worker waits warm from the start of each
chaos test, so a fault is in force milliseconds after it is asked for.

The faults built on this (latency without netem, disorder, dns_failure) journal the
chain and the worker before either exists; the undo here removes both from that
entry alone, and the crash sweep finds a dead run's chains by name.
"""

from __future__ import annotations

import atexit
import contextlib
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChaosError, EnvironmentProblem, FaultError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, sweeper, undoer
from ..targets import linux
from ..targets.cgroup import OwnCgroup
from ..targets.compose import Service
from ..targets.netns import NetNamespace, open_netns
from .base import (
    FaultHandle,
    in_each_namespace,
    journaled,
    journaled_service,
    run_of,
    running_pid,
)
from .delayer import OWN_MARK

CHAIN_PREFIX = "PYTEST_CHAOS_"


def require_netfilterqueue(what: str) -> None:
    """One sentence naming the install when the worker's library is missing."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            f"{what} needs the netfilterqueue package: apt-get install "
            "libnetfilter-queue-dev, then pip install 'pytest-chaos[nfqueue]'."
        ) from None


# -- iptables, inside the namespace -------------------------------------------------


def iptables(ns: NetNamespace, *args: str) -> str:
    return ns.run(["iptables", "-w", "5", "-t", "mangle", *args])


def remove_chain(ns: NetNamespace, chain: str) -> bool:
    listed = iptables(ns, "-S")
    if f"-N {chain}" not in listed:
        return False
    while f"-A OUTPUT -j {chain}" in iptables(ns, "-S", "OUTPUT"):
        iptables(ns, "-D", "OUTPUT", "-j", chain)
    iptables(ns, "-F", chain)
    iptables(ns, "-X", chain)
    return True


def chain_packets(ns: NetNamespace, chain: str) -> int:
    """Packets our chain's rules matched so far (iptables counters), the rule that
    lets the worker's own packets pass left out."""
    listed = iptables(ns, "-L", chain, "-v", "-x", "-n").splitlines()[2:]
    return sum(
        int(line.split()[0]) for line in listed if line.split() and "RETURN" not in line.split()
    )


def has_mangle_table(ns: NetNamespace) -> bool:
    """Whether nftables holds iptables' mangle table (iptables-nft makes it on first
    use; with iptables-legacy the table lives outside nftables and is never removed)."""
    return "table ip mangle" in ns.run(["nft", "list", "tables"]).splitlines()


def drop_mangle_table_if_ours(ns: NetNamespace, existed: bool) -> bool:
    """Leave the namespace as found: the mangle table that our rule made iptables-nft
    create goes once it holds no rule (anyone else's rule keeps it)."""
    if existed or not has_mangle_table(ns):
        return False
    if any(not line.startswith("-P ") for line in iptables(ns, "-S").splitlines()):
        return False
    ns.run(["nft", "delete", "table", "ip", "mangle"])
    return True


# -- the worker process --------------------------------------------------------------


class Worker:
    """A worker process started ahead of need (see ``delayer.py``): warm, it waits for
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
        #: The chain of ours that feeds its queue, once it has an order.
        self.chain = ""
        self._stopped = False
        self._lock = threading.Lock()

    def wait_warm(self, timeout: float = 30.0) -> None:
        self._expect(b"warm", timeout, "the packet delayer did not start")

    def start(self, ns: NetNamespace, order: dict[str, Any], timeout: float = 10.0) -> None:
        """Send the order with the namespace; return once the worker is bound."""
        socket.send_fds(self.control, [json.dumps(order).encode()], [ns.fd])
        self._expect(b"ready", timeout, "the packet delayer did not bind its queue")

    def stats(self, timeout: float = 5.0) -> dict[str, int]:
        """The policy's counters, asked of the worker now ({} once it is stopped)."""
        with self._lock:
            if self._stopped:
                return {}
            try:
                self.control.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while self.control.recv(65536):
                        pass  # a late answer to an earlier ask that timed out
                self.control.settimeout(timeout)
                self.control.sendall(b"stats")
                return {str(k): int(v) for k, v in json.loads(self.control.recv(65536)).items()}
            except (OSError, ValueError) as exc:
                raise FaultError(f"the packet worker did not say its counts: {exc}") from exc

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
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(OSError):
            self.control.sendall(b"stop")
        with contextlib.suppress(subprocess.TimeoutExpired):
            # Told to stop, it accepts what it holds and unbinds: a signal now could cut
            # that short. SIGTERM only if it does not (a warm one waits on its socket).
            self.proc.wait(timeout=2)
        if self.proc.poll() is None:
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
_spare: Worker | None = None


def prewarm() -> None:
    """Start a worker ahead of the next fault that needs one, if there is none (it
    costs a waiting Python process; it exits with pytest)."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare.proc.poll() is not None:
            _spare = Worker()


def take_worker() -> Worker:
    global _spare
    with _spare_lock:
        taken, _spare = _spare, None
    if taken is None or taken.proc.poll() is not None:
        taken = Worker()
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


# -- a fault through the queue -------------------------------------------------------


@dataclass
class WorkerHandle(FaultHandle):
    """The handle of a fault a packet worker carries out: its evidence is the
    worker's own count of what it did (:meth:`counts`)."""

    _worker: Worker | None = field(default=None, repr=False, compare=False)

    def counts(self) -> dict[str, int] | None:
        """What the worker counted so far; None before it works or once it stopped
        (the reading kept at the undo then stands)."""
        if self._worker is None:
            return None
        return self._worker.stats() or None


@contextmanager
def queued(
    service: Service,
    handle: FaultHandle,
    *,
    journal_kind: str,
    order: dict[str, Any],
    matches: Sequence[str],
    first: Sequence[str] = (),
) -> Iterator[Worker]:
    """Send what ``matches`` (iptables matches, e.g. ``-o eth0 -d 10.0.0.5``) to a
    worker of ours, ordered with ``order`` (its ``policy`` and settings), in
    ``service``'s namespace; ``first``, whole rules of the chain (``-p tcp --dport 53
    -j DROP``), come before them. Journaled under ``journal_kind`` before the chain or
    the worker's order exists; yields the worker once the rules are in force."""
    require_netfilterqueue(f"{handle.kind} (packets through a worker of ours)")
    pid = service.init_pid()
    journal = service.project.journal
    run = journal.run_id if journal else "NORUN"
    chain = f"{CHAIN_PREFIX}{run}_{secrets.token_hex(2)}".upper()
    queue = 1000 + secrets.randbelow(60000)
    # The worker was started ahead of need: its pid and start time (its identity) go
    # into the entry before it is given its order, so an undo after pytest's death
    # stops that very process.
    worker = take_worker()
    try:
        with open_netns(pid, service.name) as ns:
            existed = has_mangle_table(ns)
            data = {
                "chain": chain,
                "mangle_existed": existed,
                "pid": worker.proc.pid,
                "start": linux.start_time(worker.proc.pid),
            }
            # Rules and a process of ours: a crash of the machine takes them along.
            with journaled(service, journal_kind, handle.describe(), data, durable=False) as undone:
                try:
                    worker.chain = chain
                    worker.start(ns, {**order, "queue": queue})
                    rules = [
                        "*mangle",
                        f":{chain} - [0:0]",
                        f"-A {chain} -m mark --mark {OWN_MARK} -j RETURN",
                        *(f"-A {chain} {rule}" for rule in first),
                        *(
                            f"-A {chain} {match} -j NFQUEUE --queue-num {queue} --queue-bypass"
                            for match in matches
                        ),
                        f"-I OUTPUT -j {chain}",
                        "COMMIT",
                        "",
                    ]
                    # One transaction: the chain and the jump to it are in force together.
                    ns.run(
                        ["iptables-restore", "-w", "5", "--noflush"], input_text="\n".join(rules)
                    )
                    handle.applied_at = time.monotonic()
                    yield worker
                finally:
                    handle.keep_effect()
                    with contextlib.suppress(FaultError):
                        remove_chain(ns, chain)
                    handle.lifted_at = time.monotonic()
                    worker.stop()
                    if f"-N {chain}" in iptables(ns, "-S"):
                        raise FaultError(
                            f"iptables chain {chain} is still in {service.name}'s namespace."
                        )
                    drop_mangle_table_if_ours(ns, existed)
                    prewarm()  # for the next one
                    handle.undone_at = time.monotonic()
                    undone()
    finally:
        worker.stop()  # once more where the undo did not get that far: a no-op otherwise


@undoer("nfqueue")
@undoer("nfqueue-latency")
def undo_queued(data: dict[str, Any]) -> str:
    done = []
    # Ours on this machine first, whatever becomes of the engine below: the worker
    # stopped, its queue is bypassed (--queue-bypass) and packets flow as before.
    if "cgroup" in data:  # an entry of an earlier version
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
            if remove_chain(ns, str(data["chain"])):
                done.append(f"removed iptables chain {data['chain']}")
            if drop_mangle_table_if_ours(ns, bool(data.get("mangle_existed", True))):
                done.append("removed the empty mangle table it made")
    if not done and not data.get("applied"):
        return "the fault was never applied: nothing to undo"
    return "; ".join(done) or "nothing was left"


@sweeper("iptables-chain")
def _sweep_chains(dead: DeadRuns) -> list[str]:
    def sweep(ns: NetNamespace, name: str, project: str) -> list[str]:
        if not has_mangle_table(ns):
            return []  # listing it would make iptables-nft create it
        said = []
        for line in iptables(ns, "-S").splitlines():
            chain = line.split()[1] if line.startswith("-N ") else ""
            run = run_of(chain, CHAIN_PREFIX)
            if run is None:
                continue
            if dead.owns(run, project):
                remove_chain(ns, chain)
                said.append(f"swept {name}: iptables chain {chain} (run {run}, pytest gone)")
            else:
                said.append(
                    f"left {name}: iptables chain {chain} alone (run {run} is not a dead run "
                    "of this journal: live, or another journal's)"
                )
        # The mangle table stays: nothing says whether the dead run made it.
        return said

    return in_each_namespace(dead, sweep)


def prewarm_worker() -> None:
    """Where a packet worker may be needed (root, netfilterqueue installed), have one
    waiting: called as a chaos test starts."""
    import importlib.util

    if os.geteuid() != 0 or importlib.util.find_spec("netfilterqueue") is None:
        return
    with contextlib.suppress(ChaosError):
        prewarm()
