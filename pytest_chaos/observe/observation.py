"""What BPF probes (or the /proc fallback) saw of services while a session ran: the
result model a test asserts on. Timestamps are ``time.monotonic()`` seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import EnvironmentProblem
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .histogram import Histogram


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
class PortTraffic:
    """TCP traffic of the scope on one service port (see ``TcpObservation.served``
    and ``.peers``): connections established, data segments and payload bytes the
    scope received, and round trips in milliseconds."""

    connections: int = 0
    segments: int = 0
    bytes: int = 0
    #: Request/response pairs of the scope's client sockets: from the first send to
    #: the first data received back (network round trip plus the peer's work). Kernels
    #: before 6.4 lack the send tracepoint: None there.
    rtt: Histogram | None = None
    #: The kernel's smoothed RTT of the receiving socket at each data segment (it
    #: follows a change of the path over several round trips).
    srtt: Histogram | None = None

    def figures(self, prefix: str) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            f"{prefix}_connections": self.connections,
            f"{prefix}_segments": self.segments,
            f"{prefix}_bytes": self.bytes,
        }
        for name in ("rtt", "srtt"):
            hist = getattr(self, name)
            if hist is not None and hist.count:
                out.update(hist.figures(f"{prefix}_{name}"))
        return out


@dataclass
class TcpObservation:
    """What was seen of the scoped services' TCP while the session ran."""

    connects: list[ConnectAttempt] | None = None
    retransmits: int | None = None
    resets_sent: int | None = None
    resets_received: int | None = None
    #: Retransmissions that failed to leave (dropped on the way out; TCPRetransFail).
    retransmit_failures: int | None = None
    state_changes: dict[str, int] = field(default_factory=dict)
    #: OOM victims, fatal signals and exits of the services' processes, in order.
    process_events: list[ProcessEvent] | None = None
    #: OOM kills counted by the services' memory cgroups (the /proc fallback's view).
    oom_kills: int | None = None
    runqueue: Histogram | None = None
    #: Mean run-queue wait per scheduling of the services' threads (/proc fallback).
    runqueue_mean_us: float | None = None
    block_read: Histogram | None = None
    block_write: Histogram | None = None
    #: fsync/fdatasync durations of the services' processes (BPF only).
    sync: Histogram | None = None
    #: Pages the services' processes allocated (host-wide in the /proc fallback).
    page_allocs: int | None = None
    #: Pages they freed, and the reclaim they had to do before allocating (memory
    #: pressure): BPF only.
    page_frees: int | None = None
    reclaims: int | None = None
    #: Traffic the scope served, by its own port (e.g. 80 for nginx), and traffic it
    #: had as a client, by its peer's port (e.g. 5432 for PostgreSQL): BPF only.
    served: dict[int, PortTraffic] | None = None
    peers: dict[int, PortTraffic] | None = None
    #: Runs of the probes the kernel skipped, by event ("tcp:tcp_retransmit_skb"): an
    #: event that came while another BPF program ran on the same CPU (an interrupt's
    #: softirq, say) is not seen, so a count of that event is then a lower bound, and
    #: "none seen" does not prove none happened. Empty when none was skipped; None
    #: where the kernel does not say (before Linux 5.12) or BPF did not run.
    missed_events: dict[str, int] | None = None
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

    def served_on(self, port: int) -> PortTraffic:
        """The traffic the scope received on its own ``port`` (zeros if none)."""
        return self._traffic("served", port)

    def peer(self, port: int) -> PortTraffic:
        """The traffic the scope received from peers' ``port`` as a client (zeros if none)."""
        return self._traffic("peers", port)

    def _traffic(self, kind: str, port: int) -> PortTraffic:
        table = getattr(self, kind)
        if table is None:
            raise EnvironmentProblem(
                f"no traffic per port: BPF did not run ({self.degraded}); only counters are known."
            )
        return table.get(port) or PortTraffic()

    @property
    def oom_victims(self) -> list[ProcessEvent]:
        return [e for e in self.process_events or [] if e.kind == "oom_victim"]

    @property
    def exits(self) -> list[ProcessEvent]:
        return [e for e in self.process_events or [] if e.kind == "exit"]

    def figures(self, prefix: str = "bpf") -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"{prefix}_source": self.source}
        if self.process_events is not None:
            out[f"{prefix}_oom_victims"] = len(self.oom_victims)
            out[f"{prefix}_process_exits"] = len(self.exits)
            if self.oom_victims:
                first = self.oom_victims[0]
                out[f"{prefix}_oom_victim"] = f"{first.comm} (pid {first.pid})"
        if self.oom_kills is not None:
            out[f"{prefix}_oom_kills"] = self.oom_kills
        if self.runqueue is not None:
            out.update(self.runqueue.figures(f"{prefix}_runq"))
        if self.runqueue_mean_us is not None:
            out[f"{prefix}_runq_mean_us"] = round(self.runqueue_mean_us, 1)
        for name in ("block_read", "block_write", "sync"):
            hist = getattr(self, name)
            if hist is not None and hist.count:
                out.update(hist.figures(f"{prefix}_{name}"))
        if self.page_allocs is not None:
            out[f"{prefix}_page_allocs"] = self.page_allocs
        if self.page_frees is not None:
            out[f"{prefix}_page_frees"] = self.page_frees
        if self.reclaims is not None:
            out[f"{prefix}_reclaims"] = self.reclaims
        for kind, table in (("served", self.served), ("peer", self.peers)):
            for port, traffic in sorted((table or {}).items()):
                out.update(traffic.figures(f"{prefix}_{kind}_{port}"))
        if self.degraded:
            out[f"{prefix}_degraded"] = self.degraded
        if self.connects is not None:
            out[f"{prefix}_connect_attempts"] = len(self.connects)
            for outcome in sorted({a.outcome for a in self.connects}):
                out[f"{prefix}_connects_{outcome}"] = sum(
                    a.outcome == outcome for a in self.connects
                )
        for name in ("retransmits", "retransmit_failures", "resets_sent", "resets_received"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}_{name}"] = value
        if self.missed_events is not None:
            out[f"{prefix}_missed_events"] = sum(self.missed_events.values())
            for event, count in sorted(self.missed_events.items()):
                out[f"{prefix}_missed_{event.split(':')[-1]}"] = count
        return out

    def missed(self, event: str) -> int:
        """Runs of the probe on ``event`` ("tcp:tcp_retransmit_skb") the kernel skipped;
        0 where it does not say."""
        return (self.missed_events or {}).get(event, 0)


@dataclass(frozen=True)
class ProcessEvent:
    """An OOM victim ("oom_victim"), a fatal signal sent ("signal") or a process
    exit ("exit") of a watched process, at ``ts`` (monotonic s)."""

    ts: float
    kind: str
    pid: int
    comm: str
    signal: str | None = None
