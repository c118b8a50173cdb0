"""A probe session: kernel probes (bcc, tracepoints only) scoped to services, run in
a thread of their own while the session is open, and turned into an
:class:`~pytest_chaos.observe.observation.TcpObservation` when it closes. Where BPF
cannot load (not root, bcc missing, no tracefs, no headers), the same session reads
the services' own /proc counters for what they can tell (``procfs.py``), and says it
is degraded and why.

Timestamps are CLOCK_MONOTONIC seconds, the clock of ``time.monotonic()``, so
kernel events line up with the load generator's records and a fault's
``applied_at``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import struct
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import timeline
from ..errors import ConfigurationError, EnvironmentProblem
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from . import bpf_cache
from .events import ConnectEventStruct, ProcessEventStruct, RawConnectEvent, assemble_attempts
from .histogram import Histogram
from .kernel import BpfSupport, bpf_support, program_source
from .observation import PortTraffic, ProcessEvent, TcpObservation
from .procfs import oom_kills, proc_tcp_counters, schedstat, tasks, vmstat_pgalloc

PROBES = ("connect", "tcp", "traffic", "process", "runqueue", "block", "pages")
_SOURCES = {
    "connect": "tcp_connect.c",
    "tcp": "tcp_events.c",
    "traffic": "tcp_traffic.c",
    "process": "process_events.c",
    "runqueue": "runqueue.c",
    "block": "block_io.c",
    "pages": "page_alloc.c",
}
_SIGNALS = {2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}
_STATES = [
    "0", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
    "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE", "14", "15",
]  # fmt: skip


# -- the session ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What the probes watch: the services' IPv4 addresses (TCP probes), a function
    returning their current pids (process, run-queue and page probes; called again
    while the session runs, as services restart), block devices as (major, minor)
    (block probe), and a pid inside their network namespace (/proc fallback)."""

    addresses: tuple[str, ...]
    pid: int
    pids: Any = None  # Callable[[], set[int]]
    devices: tuple[tuple[int, int], ...] = ()
    cgroups: tuple[Path, ...] = ()  # memory cgroup directories, for the fallback
    #: (device, inode) of the services' pid namespaces: the kernel tells whether the
    #: current task is in one (bpf_get_ns_current_pid_tgid), even for a process that
    #: lives a few milliseconds.
    pid_namespaces: tuple[tuple[int, int], ...] = ()


class BpfSession:
    """Probes scoped to the services while the context is open; ``observation`` holds
    what they saw once it closes."""

    def __init__(
        self,
        addresses: Sequence[str] = (),
        *,
        pid: int,
        probes: Sequence[str] = ("connect", "tcp"),
        support: BpfSupport | None = None,
        scope: Scope | None = None,
    ) -> None:
        unknown = set(probes) - set(PROBES)
        if unknown or not probes:
            raise ConfigurationError(
                f"probes are some of {', '.join(PROBES)}; got {sorted(probes)}."
            )
        self.scope = scope or Scope(tuple(str(a) for a in addresses), pid)
        if not self.scope.addresses and {"connect", "tcp", "traffic"} & set(probes):
            raise ConfigurationError(
                "the TCP probes need the addresses of the services they watch."
            )
        if self.scope.pids is None and {"process", "runqueue", "pages"} & set(probes):
            raise ConfigurationError(
                "the process, runqueue and pages probes need the services' pids."
            )
        self.probes = tuple(probes)
        self.support = support if support is not None else bpf_support()
        self.observation = TcpObservation()
        self._bpfs: dict[str, Any] = {}
        self._events: list[RawConnectEvent] = []
        self._process_events: list[ProcessEvent] = []
        self._known_pids: set[int] = set()
        self._seeded: set[int] = set()  # threads whose run-queue verdict we wrote
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._before: dict[str, Any] = {}

    def __enter__(self) -> BpfSession:
        self._before = self._proc_snapshot()
        if not self.support.available:
            return self
        # A program missing from the package is a broken install, not a kernel that
        # cannot run BPF: say so, never fall back quietly.
        sources = {probe: program_source(_SOURCES[probe]) for probe in self.probes}
        for probe, source in sources.items():
            if not source.is_file():
                raise EnvironmentProblem(
                    f"the BPF program {source.name} ({probe} probe) is missing: reinstall "
                    "pytest-chaos, or point CHAOS_BPF_PROGRAMS at a folder that has it."
                )
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception on load failures
            self._close_bpf()
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            self.support = BpfSupport(False, f"BPF did not load: {last}")
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._proc_snapshot()
        if self._bpfs:
            self._stop.set()
            if self._poller is not None:
                self._poller.join(5)
            self._collect()
            self._close_bpf()
        else:
            self._fallback(after)

    # -- BPF -----------------------------------------------------------------------------

    def _compiled(self, probe: str, flags: list[str]) -> Any:
        """The probe's program, attached: from the cache of compiled programs where it
        is there (no compiler run), else compiled by bcc and then kept there."""
        from bcc import BPF

        path = program_source(_SOURCES[probe])
        directory = bpf_cache.cache_dir()
        if directory is None:
            return BPF(src_file=str(path).encode(), cflags=flags)
        key = bpf_cache.cache_key(
            path.read_bytes(), [*flags, self.support.kernel_source or ""], _tracefs()
        )
        entry = bpf_cache.lookup(directory, key)
        if entry is not None:
            try:
                return bpf_cache.CachedProgram(entry)
            except Exception:  # noqa: BLE001 - whatever is wrong with it, compile again
                bpf_cache.forget(directory, key)  # and keep the new one below
        bpf = BPF(src_file=str(path).encode(), cflags=flags)
        # Keeping it is an optimisation: a cache that cannot be written costs nothing.
        with contextlib.suppress(OSError, ValueError):
            bpf_cache.store(directory, key, bpf_cache.extract(bpf))
        return bpf

    def _load(self) -> None:
        if self.support.kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = self.support.kernel_source
        flags = [*_tracepoint_flags(), f"-DCHAOS_PID_MAX={_pid_max()}"]
        for probe in self.probes:
            self._bpfs[probe] = self._compiled(probe, flags)
        keys = [struct.unpack("I", socket.inet_aton(a))[0] for a in self.scope.addresses]
        for probe in ("connect", "tcp", "traffic"):
            if probe in self._bpfs:
                table = self._bpfs[probe][b"scope"]
                for key in keys:
                    table[table.Key(key)] = table.Leaf(1)
        for probe in ("process", "pages", "block", "runqueue"):
            if probe in self._bpfs:
                table = self._bpfs[probe][b"pid_namespaces"]
                for i, (dev, ino) in enumerate(self.scope.pid_namespaces[:8]):
                    table[table.Key(i)] = table.Leaf(dev, ino)
        if "block" in self._bpfs:
            table = self._bpfs["block"][b"devices"]
            for major, minor in self.scope.devices:
                table[table.Key((major << 20) | minor)] = table.Leaf(1)
        self._refresh_pids()
        if "connect" in self._bpfs:
            self._bpfs["connect"][b"connect_events"].open_perf_buffer(self._on_connect, page_cnt=64)
        if "process" in self._bpfs:
            self._bpfs["process"][b"process_events"].open_perf_buffer(self._on_process, page_cnt=64)
        self._poller = threading.Thread(target=self._poll, name="pytest-chaos-bpf", daemon=True)
        self._poller.start()

    # Callbacks decode with our own structs: a callback that referred to the bcc table
    # would keep it alive past cleanup(), and its __del__ then fails.

    def _on_connect(self, _cpu: int, data: Any, _size: int) -> None:
        ev = ctypes.cast(data, ctypes.POINTER(ConnectEventStruct)).contents
        self._events.append(
            RawConnectEvent(
                ts=ev.ts_ns / 1e9,
                kind=int(ev.kind),
                skaddr=int(ev.skaddr),
                saddr=socket.inet_ntoa(struct.pack("I", ev.saddr)),
                daddr=socket.inet_ntoa(struct.pack("I", ev.daddr)),
                sport=int(ev.sport),
                dport=int(ev.dport),
                error=int(ev.error),
            )
        )

    def _on_process(self, _cpu: int, data: Any, _size: int) -> None:
        ev = ctypes.cast(data, ctypes.POINTER(ProcessEventStruct)).contents
        pid = int(ev.pid)
        kind = {1: "oom_victim", 2: "signal", 3: "exit"}.get(int(ev.kind), "unknown")
        if not ev.in_scope and pid not in self._known_pids:
            self._refresh_pids()  # a process that started since the last refresh
            if pid not in self._known_pids:
                return
        self._process_events.append(
            ProcessEvent(
                ts=ev.ts_ns / 1e9,
                kind=kind,
                pid=pid,
                comm=bytes(ev.comm).split(b"\0", 1)[0].decode("utf-8", "replace"),
                signal=_SIGNALS.get(int(ev.sig)) if kind == "signal" else None,
            )
        )

    def _refresh_pids(self) -> None:
        if self.scope.pids is None:
            return
        pids = set(self.scope.pids())
        self._known_pids |= pids
        tids = {int(t.name) for p in pids for t in tasks(p)}
        if "runqueue" in self._bpfs:
            # Seeds: the kernel learns other threads' verdicts as they run.
            table = self._bpfs["runqueue"][b"verdicts"]
            for tid in tids - self._seeded:
                table[table.Key(tid)] = table.Leaf(1)
            self._seeded |= tids

    def _poll(self) -> None:
        # No periodic work besides reading events: the kernel scopes by pid namespace
        # (a thread's run-queue verdict, exits, pages), and the services' pids are
        # asked for only when a signal names a pid not seen yet. This thread shares
        # pytest's interpreter with the load generators: it must stay idle.
        buffers = [self._bpfs[p] for p in ("connect", "process") if p in self._bpfs]
        while not self._stop.is_set():
            for bpf in buffers:
                bpf.perf_buffer_poll(timeout=100)
            if not buffers:
                self._stop.wait(0.1)

    def _collect(self) -> None:
        obs = TcpObservation(source="bpf")
        for probe in ("connect", "process"):
            if probe in self._bpfs:
                self._bpfs[probe].perf_buffer_poll(timeout=50)
        if "connect" in self._bpfs:
            obs.connects = assemble_attempts(self._events)
            for a in obs.connects:
                if a.outcome != "established":
                    timeline.note_event(
                        a.started, f"connect {a.outcome}", f"{a.destination}:{a.port}"
                    )
        if "tcp" in self._bpfs:
            counters = [v.value for v in self._bpfs["tcp"][b"counters"].values()]
            obs.retransmits, obs.resets_sent, obs.resets_received = counters[:3]
            obs.retransmit_failures = counters[3]
            obs.state_changes = {
                _STATES[i]: v.value
                for i, v in enumerate(self._bpfs["tcp"][b"states"].values())
                if v.value
            }
        if "traffic" in self._bpfs:
            obs.served, obs.peers = _traffic(self._bpfs["traffic"])
        if "process" in self._bpfs:
            obs.process_events = sorted(self._process_events, key=lambda e: e.ts)
            for e in obs.process_events:
                label = f"{e.comm} ({e.pid})" + (f" {e.signal}" if e.signal else "")
                timeline.note_event(e.ts, e.kind, label)
        if "runqueue" in self._bpfs:
            obs.runqueue = _histogram(self._bpfs["runqueue"][b"runq_us"])
        if "block" in self._bpfs:
            obs.block_read = _histogram(self._bpfs["block"][b"read_us"])
            obs.block_write = _histogram(self._bpfs["block"][b"write_us"])
            obs.sync = _histogram(self._bpfs["block"][b"sync_us"])
        if "pages" in self._bpfs:
            counts = self._bpfs["pages"][b"pages"]
            obs.page_allocs = int(counts[0].value)
            obs.page_frees = int(counts[1].value)
            obs.reclaims = int(counts[2].value)
        obs.missed_events = self._missed()
        self.observation = obs

    def _missed(self) -> dict[str, int] | None:
        """The runs of each program the kernel skipped (None where it does not say)."""
        missed: dict[str, int] = {}
        for bpf in self._bpfs.values():
            for function, fd in _program_fds(bpf).items():
                count = recursion_misses(fd)
                if count is None:
                    return None
                if count:
                    missed[_event_name(function)] = count
        return missed

    def _close_bpf(self) -> None:
        for bpf in self._bpfs.values():
            bpf.cleanup()
        self._bpfs.clear()

    # -- /proc -----------------------------------------------------------------------------

    def _proc_snapshot(self) -> dict[str, Any]:
        try:
            tcp = proc_tcp_counters(self.scope.pid)
        except OSError:  # the process is gone (its container stopped or restarted)
            tcp = {}
        snap: dict[str, Any] = {"tcp": tcp}
        snap["oom"] = sum(oom_kills(c) for c in self.scope.cgroups)
        if self.scope.pids is not None:
            snap["sched"] = schedstat(self.scope.pids())
        snap["vmstat"] = vmstat_pgalloc()
        return snap

    def _fallback(self, after: dict[str, Any]) -> None:
        tcp_before, tcp_after = self._before["tcp"], after["tcp"]

        def delta(key: str) -> int:
            return int(tcp_after.get(key, 0)) - int(tcp_before.get(key, 0))

        obs = TcpObservation(
            retransmits=delta("Tcp.RetransSegs"),
            retransmit_failures=delta("TcpExt.TCPRetransFail"),
            resets_sent=delta("Tcp.OutRsts"),
            state_changes={
                "ActiveOpens": delta("Tcp.ActiveOpens"),
                "AttemptFails": delta("Tcp.AttemptFails"),
            },
            source="proc",
            degraded=self.support.reason,
        )
        if self.scope.cgroups:
            obs.oom_kills = after["oom"] - self._before["oom"]
        if "sched" in after:
            waited = after["sched"][0] - self._before["sched"][0]
            slices = after["sched"][1] - self._before["sched"][1]
            obs.runqueue_mean_us = waited / slices / 1000 if slices > 0 else 0.0
        obs.page_allocs = after["vmstat"] - self._before["vmstat"]  # host-wide: degraded
        self.observation = obs


def _program_fds(bpf: Any) -> dict[str, int]:
    if isinstance(bpf, bpf_cache.CachedProgram):
        return bpf.program_fds()
    return {bytes(name).decode(): function.fd for name, function in bpf.funcs.items()}


def recursion_misses(fd: int) -> int | None:
    """How many times the kernel skipped BPF program ``fd`` because another BPF program
    was running on that CPU at that moment (a timer's softirq that interrupted it, say):
    ``recursion_misses`` of the program's fdinfo, Linux 5.12 and later; None before."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    found = re.search(r"^recursion_misses:\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _event_name(function: str) -> str:
    """``tracepoint__tcp__tcp_retransmit_skb`` -> ``tcp:tcp_retransmit_skb``."""
    parts = function.split("__")
    if len(parts) == 3 and parts[0] == "tracepoint":
        return f"{parts[1]}:{parts[2]}"
    return function


def _pid_max() -> int:
    """The kernel's pid_max: the size of the programs' arrays indexed by thread id."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 4194304  # the most a 64-bit kernel allows


def _tracefs() -> Path | None:
    roots = [Path(r) for r in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")]
    return next((r for r in roots if (r / "events").is_dir()), None)


def _tracepoint_flags() -> list[str]:
    """-D flags for tracepoints, and tracepoint arguments, that only some kernels have."""
    root = _tracefs()
    if root is None:
        return []
    flags = []
    with contextlib.suppress(OSError):
        # Request/response timing needs the socket's address where data arrives and
        # the send tracepoint (both in 6.x kernels; bookworm's 6.1 has neither).
        probe_format = (root / "events/tcp/tcp_probe/format").read_text()
        if "skaddr;" in probe_format and (root / "events/sock/sock_send_length").is_dir():
            flags.append("-DCHAOS_PAIRS")
    with contextlib.suppress(OSError):
        if " err;" in (root / "events/tcp/tcp_retransmit_skb/format").read_text():
            flags.append("-DCHAOS_RETRANSMIT_HAS_ERR")
    return flags


def _traffic(bpf: Any) -> tuple[dict[int, PortTraffic], dict[int, PortTraffic]]:
    """The traffic program's tables as (served, peers), each by port."""
    tables: dict[int, dict[int, PortTraffic]] = {1: {}, 2: {}}  # ROLE_SERVED, ROLE_PEER
    for key, flow in bpf[b"flows"].items():
        role, port = key.value >> 16, key.value & 0xFFFF
        if role in tables:
            tables[role][port] = PortTraffic(
                connections=int(flow.connections), segments=int(flow.segments),
                bytes=int(flow.bytes),
            )  # fmt: skip
    samples: dict[tuple[int, int, int], dict[int, int]] = defaultdict(dict)
    for key, count in bpf[b"rtt"].items():
        role, port = key.flow >> 16, key.flow & 0xFFFF
        samples[(role, port, int(key.kind))][int(key.bucket)] = int(count.value)
    for (role, port, kind), buckets in samples.items():
        traffic = tables.get(role, {}).setdefault(port, PortTraffic())
        histogram = Histogram(buckets, unit="ms", width=_RTT_BUCKET_MS)
        if kind == 1:  # KIND_PAIR
            traffic.rtt = histogram
        else:
            traffic.srtt = histogram
    return tables[1], tables[2]


_RTT_BUCKET_MS = 0.1  # BUCKET_US in tcp_traffic.c


def _histogram(table: Any) -> Histogram:
    return Histogram({int(k.value): int(v.value) for k, v in table.items() if v.value})


def scope_of(services: Sequence[Any]) -> Scope:
    """The Scope of compose services: their addresses, their current pids (read from
    their cgroups each time), the disks holding their data, their memory cgroups."""
    from ..faults.resources import data_path
    from ..targets.cgroup import block_device

    def pids() -> set[int]:
        found: set[int] = set()
        for service in services:
            with contextlib.suppress(Exception):
                found |= service.pids()
        return found

    devices = []
    cgroups = []
    for service in services:
        with contextlib.suppress(Exception):
            devices.append(block_device(data_path(service)))
        with contextlib.suppress(Exception):
            cgroups.append(service.cgroup().path("memory", "cgroup.procs").parent)
    namespaces = []
    for service in services:
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{service.init_pid()}/ns/pid")
            namespaces.append((st.st_dev, st.st_ino))
    return Scope(
        pid_namespaces=tuple(sorted(set(namespaces))),
        addresses=tuple(a for s in services for a in s.addresses()),
        pid=services[0].init_pid(),
        pids=pids,
        devices=tuple(sorted(set(devices))),
        cgroups=tuple(cgroups),
    )
