"""Kernel probes (bcc, tracepoints only) scoped to services, and what they saw as
numbers a test can assert on. Where BPF cannot load (not root, bcc missing, no
tracefs, no headers), the same session reads the services' own /proc counters for
what they can tell, and says it is degraded and why.

Timestamps are CLOCK_MONOTONIC seconds, the clock of ``time.monotonic()``, so
kernel events line up with the load generator's records and a fault's
``applied_at``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, EnvironmentProblem
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

PROBES = ("connect", "tcp")
_SOURCES = {"connect": "tcp_connect.c", "tcp": "tcp_events.c"}
_STATES = [
    "0", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
    "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE", "14", "15",
]  # fmt: skip
_OUTCOMES = {
    errno_codes.ECONNREFUSED: "refused",
    errno_codes.ETIMEDOUT: "timeout",
    errno_codes.EHOSTUNREACH: "unreachable",
    errno_codes.ENETUNREACH: "unreachable",
    errno_codes.ECONNRESET: "reset",
}


# -- what the probes report ----------------------------------------------------------


@dataclass(frozen=True)
class ConnectAttempt:
    """One TCP connect: when it started (monotonic s), to where, and how it ended:
    "established", "refused" (ECONNREFUSED), "timeout" (ETIMEDOUT), "unreachable",
    "closed" (the caller gave up first) or "pending"."""

    started: float
    source: str
    destination: str
    port: int
    outcome: str
    errno: int | None = None
    ended: float | None = None
    source_port: int = 0


@dataclass
class TcpObservation:
    """What was seen of the scoped services' TCP while the session ran."""

    connects: list[ConnectAttempt] | None = None
    retransmits: int | None = None
    resets_sent: int | None = None
    resets_received: int | None = None
    state_changes: dict[str, int] = field(default_factory=dict)
    #: "bpf", or "proc" when only /proc counters could be read.
    source: str = "bpf"
    #: Why the observation is degraded (None when BPF ran).
    degraded: str | None = None

    def attempts_to(self, port: int, destination: str | None = None) -> list[ConnectAttempt]:
        if self.connects is None:
            raise EnvironmentProblem(
                f"no connect timeline: BPF did not run ({self.degraded}); only counters are known."
            )
        return [
            a
            for a in self.connects
            if a.port == port and (destination is None or a.destination == destination)
        ]

    def figures(self, prefix: str = "bpf") -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"{prefix}_source": self.source}
        if self.degraded:
            out[f"{prefix}_degraded"] = self.degraded
        if self.connects is not None:
            out[f"{prefix}_connect_attempts"] = len(self.connects)
            for outcome in sorted({a.outcome for a in self.connects}):
                out[f"{prefix}_connects_{outcome}"] = sum(
                    a.outcome == outcome for a in self.connects
                )
        for name in ("retransmits", "resets_sent", "resets_received"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}_{name}"] = value
        return out


# -- pairing kernel events into attempts ---------------------------------------------


class _ConnectEvent(ctypes.Structure):
    """struct connect_event of bpf_programs/tcp_connect.c."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("skaddr", ctypes.c_uint64),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("error", ctypes.c_int32),
        ("kind", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RawConnectEvent:
    ts: float
    kind: int  # 1 started, 2 established, 3 error, 4 closed (bpf_programs/tcp_connect.c)
    skaddr: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    error: int


def assemble_attempts(events: Iterable[RawConnectEvent]) -> list[ConnectAttempt]:
    """Pair state changes (by socket) and error reports (by 4-tuple) into attempts."""
    open_: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    errors: dict[tuple[str, int, str, int], list[RawConnectEvent]] = {}
    for ev in sorted(events, key=lambda e: e.ts):
        if ev.kind == 1:
            if ev.skaddr in open_:
                done.append(open_.pop(ev.skaddr))
            open_[ev.skaddr] = {"started": ev.ts, "source": ev.saddr, "destination": ev.daddr,
                                "port": ev.dport, "outcome": "pending"}  # fmt: skip
        elif ev.kind in (2, 4) and ev.skaddr in open_:
            attempt = open_.pop(ev.skaddr)
            attempt.update(ended=ev.ts, source_port=ev.sport,
                           outcome="established" if ev.kind == 2 else "closed")  # fmt: skip
            done.append(attempt)
        elif ev.kind == 3:
            errors.setdefault((ev.saddr, ev.sport, ev.daddr, ev.dport), []).append(ev)
    done.extend(open_.values())
    attempts = []
    for a in sorted(done, key=lambda a: a["started"]):
        if a["outcome"] == "closed":
            for err in errors.get(
                (a["source"], a.get("source_port", 0), a["destination"], a["port"]), []
            ):
                if a["started"] <= err.ts <= (a.get("ended") or err.ts) + 1.0:
                    a["errno"] = err.error
                    a["outcome"] = _OUTCOMES.get(
                        err.error, errno_codes.errorcode.get(err.error, "error")
                    )
                    break
        attempts.append(ConnectAttempt(**a))
    return attempts


# -- can BPF run here? -------------------------------------------------------------------


@dataclass(frozen=True)
class BpfSupport:
    available: bool
    reason: str = ""
    kernel_source: str | None = None


MERGED_HEADERS = Path("/var/lib/pytest-chaos/kernel-headers")


def kernel_source(
    release: str | None = None,
    *,
    modules: Path = Path("/lib/modules"),
    merged_root: Path = MERGED_HEADERS,
    environ: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """Headers bcc can compile against: BCC_KERNEL_SOURCE if set, the running
    kernel's own (a host with real headers: None, bcc's default), else the merged
    Debian headers scripts/kernel-headers prepares. Returns (path, problem)."""
    release = release or os.uname().release
    env = os.environ if environ is None else environ
    if env.get("BCC_KERNEL_SOURCE"):
        return env["BCC_KERNEL_SOURCE"], ""
    if (modules / release / "build" / "include").exists():
        return None, ""
    merged = merged_root / release
    if (merged / ".complete").exists():
        return str(merged), ""
    return None, (
        f"no kernel headers for {release} (/lib/modules/{release}/build is missing): "
        "run scripts/kernel-headers (scripts/setup does)"
    )


def bpf_support() -> BpfSupport:
    if os.geteuid() != 0:
        return BpfSupport(False, "BPF needs root: run pytest with sudo")
    try:
        import bcc  # noqa: F401
    except ImportError:
        return BpfSupport(
            False,
            "bcc does not import: apt-get install python3-bpfcc and link it into the venv "
            "(scripts/setup does; never pip install bcc, an unrelated package)",
        )
    if not any(
        Path(p, "events").is_dir() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    ):
        return BpfSupport(
            False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"
        )
    source, problem = kernel_source()
    if problem:
        return BpfSupport(False, problem)
    return BpfSupport(True, kernel_source=source)


def programs_dir() -> Path:
    configured = os.environ.get("CHAOS_BPF_PROGRAMS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "bpf_programs"


# -- /proc fallback ----------------------------------------------------------------------


def proc_tcp_counters(pid: int) -> dict[str, int]:
    """The Tcp and TcpExt counters of ``pid``'s network namespace."""
    counters: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, keys = header.split(":", 1)
            _, nums = values.split(":", 1)
            if prefix in ("Tcp", "TcpExt"):
                for key, value in zip(keys.split(), nums.split(), strict=False):
                    counters[f"{prefix}.{key}"] = int(value)
    return counters


# -- the session ----------------------------------------------------------------------------


class BpfSession:
    """Probes scoped to ``addresses`` (the services' IPv4 addresses) while the context
    is open; ``observation`` holds what they saw once it closes. ``pid`` is a process
    in the services' network namespace, for the /proc fallback."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        pid: int,
        probes: Sequence[str] = PROBES,
        support: BpfSupport | None = None,
    ) -> None:
        unknown = set(probes) - set(PROBES)
        if unknown or not probes:
            raise ConfigurationError(
                f"probes are some of {', '.join(PROBES)}; got {sorted(probes)}."
            )
        if not addresses:
            raise ConfigurationError(
                "a BPF session needs the addresses of the services it watches."
            )
        self.addresses = [str(a) for a in addresses]
        self.pid = pid
        self.probes = tuple(probes)
        self.support = support if support is not None else bpf_support()
        self.observation = TcpObservation()
        self._bpfs: dict[str, Any] = {}
        self._events: list[RawConnectEvent] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._counters_before: dict[str, int] = {}

    def __enter__(self) -> BpfSession:
        self._counters_before = proc_tcp_counters(self.pid)
        if not self.support.available:
            return self
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception on load failures
            self._close_bpf()
            self.support = BpfSupport(
                False, f"BPF did not load: {str(exc).strip().splitlines()[-1]}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        after = proc_tcp_counters(self.pid)
        if self._bpfs:
            self._stop.set()
            if self._poller is not None:
                self._poller.join(5)
            self._collect()
            self._close_bpf()
        else:
            self._fallback(after)

    # -- BPF -----------------------------------------------------------------------------

    def _load(self) -> None:
        from bcc import BPF

        if self.support.kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = self.support.kernel_source
        keys = [struct.unpack("I", socket.inet_aton(a))[0] for a in self.addresses]
        for probe in self.probes:
            bpf = BPF(src_file=str(programs_dir() / _SOURCES[probe]).encode())
            self._bpfs[probe] = bpf
            scope = bpf[b"scope"]
            for key in keys:
                scope[scope.Key(key)] = scope.Leaf(1)
        if "connect" in self._bpfs:

            def on_event(_cpu: int, data: Any, _size: int) -> None:
                # Decoded with our own struct: a callback that referred to the bcc
                # table would keep it alive past cleanup(), and its __del__ then fails.
                ev = ctypes.cast(data, ctypes.POINTER(_ConnectEvent)).contents
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

            self._bpfs["connect"][b"connect_events"].open_perf_buffer(on_event, page_cnt=64)
            self._poller = threading.Thread(target=self._poll, name="pytest-chaos-bpf", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        bpf = self._bpfs["connect"]
        while not self._stop.is_set():
            bpf.perf_buffer_poll(timeout=100)

    def _collect(self) -> None:
        obs = TcpObservation(source="bpf")
        if "connect" in self._bpfs:
            self._bpfs["connect"].perf_buffer_poll(timeout=50)
            obs.connects = assemble_attempts(self._events)
        if "tcp" in self._bpfs:
            counters = [v.value for v in self._bpfs["tcp"][b"counters"].values()]
            obs.retransmits, obs.resets_sent, obs.resets_received = counters[:3]
            obs.state_changes = {
                _STATES[i]: v.value
                for i, v in enumerate(self._bpfs["tcp"][b"states"].values())
                if v.value
            }
        self.observation = obs

    def _close_bpf(self) -> None:
        for bpf in self._bpfs.values():
            bpf.cleanup()
        self._bpfs.clear()

    # -- /proc -----------------------------------------------------------------------------

    def _fallback(self, after: dict[str, int]) -> None:
        def delta(key: str) -> int:
            return after.get(key, 0) - self._counters_before.get(key, 0)

        self.observation = TcpObservation(
            connects=None,
            retransmits=delta("Tcp.RetransSegs"),
            resets_sent=delta("Tcp.OutRsts"),
            resets_received=None,
            state_changes={
                "ActiveOpens": delta("Tcp.ActiveOpens"),
                "AttemptFails": delta("Tcp.AttemptFails"),
            },
            source="proc",
            degraded=self.support.reason,
        )


class BpfProbes:
    """What the ``bpf`` fixture hands a test: ``watch`` opens a session scoped to
    services of the compose project; its figures become JUnit properties
    ``bpf_<service>_...`` when it closes."""

    def __init__(self, project: Any, record: Any) -> None:
        self._project = project
        self._record = record
        self.support = bpf_support()

    @contextlib.contextmanager
    def watch(self, *services: str, probes: Sequence[str] = PROBES) -> Iterator[BpfSession]:
        if not services:
            raise ConfigurationError("watch which service? e.g. bpf.watch('trading-api').")
        targets = [self._project().service(name) for name in services]
        addresses = [a for t in targets for a in t.addresses()]
        session = BpfSession(
            addresses, pid=targets[0].init_pid(), probes=probes, support=self.support
        )
        with session:
            yield session
        label = "_".join(name.replace("-", "_") for name in services)
        for key, value in session.observation.figures(prefix=f"bpf_{label}").items():
            self._record(key, value)
