"""DNS failure for a service: its lookups (of every name, or of chosen ones) time out
or are answered SERVFAIL, while the rest of its traffic flows.

Its UDP queries to port 53 (Docker's embedded resolver at 127.0.0.11, or any other)
go, in its own network namespace, to a packet worker of ours (``nfqueue.py``) before
Docker's own address translation sees them. The worker reads each query's name: one
to fail is dropped (``mode="timeout"``: the resolver waits and retries) or answered
in the resolver's place with SERVFAIL (``mode="servfail"``: it fails at once); any
other passes. Without ``names``, TCP lookups are dropped too. IPv4 only.

Everything the fault adds (a chain of ours, a worker process) is journaled before it
exists; the undo removes both, and the rule's --queue-bypass lets lookups through if
the worker dies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dnswire import SERVFAIL, answer, question
from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault
from .base import Effect
from .delayer import Policy
from .nfqueue import WorkerHandle, queued

if TYPE_CHECKING:
    from ..chaos import Chaos
    from ..targets.compose import Service

MODES = ("servfail", "timeout")


# -- DNS on the wire (pure functions: unit-tested on bytes) --------------------------


@dataclass(frozen=True)
class Query:
    """A DNS query in an IPv4 UDP datagram: its question's name (lower case, no final
    dot), and the length of its IP header."""

    name: str
    ip_header: int


def parse_query(datagram: bytes) -> Query | None:
    """The query ``datagram`` carries, or None (not IPv4 UDP, or not a DNS query of
    one question: :func:`pytest_chaos.dnswire.question`)."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4 or datagram[9] != 17:
        return None
    ip_header = (datagram[0] & 0x0F) * 4
    if ip_header < 20:
        return None
    asked = question(datagram[ip_header + 8 :])
    return None if asked is None else Query(asked.name, ip_header)


def matches(name: str, names: Sequence[str]) -> bool:
    """Whether a lookup of ``name`` is one to fail: every lookup when ``names`` is
    empty; else one of a given name, of it with a search domain appended (``db`` ->
    ``db.example.com``), or of a name under it (``example.com`` -> ``api.example.com``)."""
    if not names:
        return True
    for wanted in names:
        wanted = wanted.lower().rstrip(".")
        if name == wanted or name.startswith(f"{wanted}.") or name.endswith(f".{wanted}"):
            return True
    return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def servfail(datagram: bytes, query: Query) -> bytes:
    """The datagram a resolver that failed would send back for ``datagram``'s query:
    SERVFAIL with the same id and question, from the address and port it went to."""
    source, destination = datagram[12:16], datagram[16:20]
    udp = datagram[query.ip_header : query.ip_header + 8]
    message = answer(datagram[query.ip_header + 8 :], SERVFAIL)
    if message is None:
        raise ValueError("not a DNS query")
    length = 8 + len(message)
    header = udp[2:4] + udp[0:2] + length.to_bytes(2, "big")
    pseudo = destination + source + b"\x00\x11" + length.to_bytes(2, "big")
    check = _checksum(pseudo + header + b"\x00\x00" + message) or 0xFFFF
    segment = header + check.to_bytes(2, "big") + message
    total = (20 + len(segment)).to_bytes(2, "big")
    ip = b"\x45\x00" + total + b"\x00\x00\x40\x00\x40\x11\x00\x00" + destination + source
    ip = ip[:10] + _checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + segment


class FailLookups(Policy):
    """The worker's policy: drop (``timeout``) or answer SERVFAIL to the queries of the
    names to fail; let every other packet pass."""

    def __init__(self, settings: dict[str, Any], rng: Any) -> None:
        super().__init__(settings, rng)
        self.mode = str(settings["mode"])
        self.names = [str(n) for n in settings.get("names") or []]
        self.counts.update(queries=0, failed=0)

    def on_packet(self, packet: Any, now: float) -> None:
        self.count("packets")
        datagram = packet.get_payload()
        query = parse_query(datagram)
        if query is None:
            packet.accept()
            return
        self.count("queries")
        if not matches(query.name, self.names):
            packet.accept()
            return
        self.count("failed")
        if self.mode == "servfail":
            self.send(servfail(datagram, query))
        packet.drop()


# -- the fault -----------------------------------------------------------------------


@dataclass
class DnsHandle(WorkerHandle):
    mode: str = "servfail"
    names: tuple[str, ...] = ()

    def measure_effect(self) -> Effect | None:
        counts = self.counts()
        if counts is None:
            return None
        failed, seen = counts.get("failed", 0), counts.get("queries", 0)
        what = "timed out (dropped)" if self.mode == "timeout" else "answered SERVFAIL"
        return Effect(failed > 0, f"{failed} of {seen} lookups {what}")

    def describe(self) -> str:
        which = ", ".join(self.names) or "every name"
        return f"dns_failure {self.target} ({which}: {self.mode})"

    def figures(self) -> dict[str, float | int | str]:
        return {**super().figures(), "mode": self.mode, "names": ",".join(self.names) or "*"}


def check(mode: str, names: Sequence[str] | None) -> tuple[str, ...]:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if names is None:
        return ()
    if isinstance(names, str) or not all(isinstance(n, str) and n.strip(".") for n in names):
        raise ConfigurationError(f"names must be a list of host names, not {names!r}.")
    return tuple(n.strip(".").lower() for n in names)


@contextmanager
def dns_failure(
    service: Service, *, mode: str = "servfail", names: Sequence[str] | None = None
) -> Iterator[DnsHandle]:
    """Fail ``service``'s lookups (of ``names``, or all) as ``mode`` says."""
    chosen = check(mode, names)
    handle = DnsHandle(kind="dns_failure", target=service.label, mode=mode, names=chosen)
    with queued(
        service,
        handle,
        journal_kind="nfqueue",
        order={"policy": f"{__name__}:FailLookups", "mode": mode, "names": list(chosen)},
        matches=["-p udp --dport 53"],
        first=[] if chosen else ["-p tcp --dport 53 -j DROP"],
    ) as worker:
        handle._worker = worker
        yield handle


@fault(
    "dns_failure",
    grid={"mode": MODES},
    journal=("nfqueue",),
    leaves=("iptables-chain",),
    requires=("root", "this-kernel", "nfqueue"),
    example="chaos.dns_failure({service})",
)
def _chaos_dns_failure(
    chaos: Chaos, service: str, *, mode: str = "servfail", names: list[str] | None = None
) -> AbstractContextManager[DnsHandle]:
    """Fail ``service``'s DNS lookups (of ``names`` only, else all) while its other
    traffic flows: ``mode`` ``servfail`` answers them SERVFAIL at once, ``timeout``
    drops them (the resolver waits and retries); through a packet worker of ours in its
    namespace, before Docker's resolver sees them. Undo: the chain removed and the
    worker stopped."""
    check(mode, names)
    return dns_failure(chaos.service(service), mode=mode, names=names)
