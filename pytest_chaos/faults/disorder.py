"""Packets out of order and twice: a share of what a service sends (to chosen peers,
or to everything) is held back ``gap`` so that the packets after it overtake it, and
a share is sent twice. Where the kernel has no sch_netem (this project's machines), a
packet worker of ours does it (``nfqueue.py``): the rule that feeds it sits in the
service's own network namespace, with --queue-bypass (traffic flows in order, once,
if the worker dies), and the worker's copies carry a mark of ours so they are not
queued again.

The handle's evidence is the worker's own count: packets seen, held back, overtaken
(a packet sent while an earlier one was held), and duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import fault
from ..units import parse_duration
from .base import Effect
from .delayer import Policy
from .network import peer_addresses
from .nfqueue import WorkerHandle, queued

if TYPE_CHECKING:
    from ..chaos import Chaos
    from ..targets.compose import Service


class Disorder(Policy):
    """The worker's policy: each packet is copied with probability ``duplicate`` %,
    and held back ``gap_ms`` with probability ``reorder`` % (else sent at once, past
    whatever is held)."""

    def __init__(self, settings: dict[str, Any], rng: Any) -> None:
        super().__init__(settings, rng)
        self.reorder = float(settings["reorder"]) / 100.0
        self.duplicate = float(settings["duplicate"]) / 100.0
        self.gap_s = float(settings["gap_ms"]) / 1000.0
        self.counts.update(held=0, overtook=0, duplicated=0)

    def on_packet(self, packet: Any, now: float) -> None:
        self.count("packets")
        if self.duplicate and self.rng.random() < self.duplicate:
            self.send(packet.get_payload())
            self.count("duplicated")
        if self.reorder and self.rng.random() < self.reorder:
            self.count("held")
            self.hold(packet, now + self.gap_s)
            return
        if self.holding():
            self.count("overtook")
        packet.accept()

    def holding(self) -> bool:
        return bool(self._held)


@dataclass
class DisorderHandle(WorkerHandle):
    reorder: float = 0.0
    duplicate: float = 0.0
    gap_s: float = 0.0
    peers: dict[str, str] | None = None

    def measure_effect(self) -> Effect | None:
        counts = self.counts()
        if counts is None:
            return None
        seen, overtook, twice = counts["packets"], counts["overtook"], counts["duplicated"]
        return Effect(
            overtook + twice > 0,
            f"of {seen} packets, {counts['held']} held back ({overtook} overtaken by a later "
            f"one), {twice} sent twice",
        )

    def describe(self) -> str:
        whom = ", ".join(self.peers or {}) or "all traffic"
        return (
            f"disorder {self.target} -> {whom}: {self.reorder:g}% held {self.gap_s * 1000:g} ms, "
            f"{self.duplicate:g}% twice"
        )

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "reorder_percent": self.reorder,
            "duplicate_percent": self.duplicate,
            "gap_ms": round(self.gap_s * 1000, 3),
        }


def check(reorder: float, duplicate: float, gap: float | str) -> float:
    """The gap in seconds, the shares checked (each 0-100, not both 0)."""
    for name, value in (("reorder", reorder), ("duplicate", duplicate)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ConfigurationError(f"{name} is a percentage from 0 to 100, not {value!r}.")
    if not reorder and not duplicate:
        raise ConfigurationError("reorder and duplicate are both 0: nothing would change.")
    gap_s = parse_duration(gap, name="gap")
    if not 0.001 <= gap_s <= 2.0:
        raise ConfigurationError(f"gap must be from 1 ms to 2 s, not {gap!r}.")
    return gap_s


@contextmanager
def disorder(
    service: Service,
    peers: Sequence[Service | str] = (),
    *,
    reorder: float = 25,
    duplicate: float = 0,
    gap: float | str = "20ms",
) -> Iterator[DisorderHandle]:
    """Reorder and duplicate what ``service`` sends (to ``peers``, or everything)."""
    gap_s = check(reorder, duplicate, gap)
    addresses = peer_addresses(service, peers)
    handle = DisorderHandle(
        kind="disorder",
        target=service.label,
        reorder=float(reorder),
        duplicate=float(duplicate),
        gap_s=gap_s,
        peers=addresses,
    )
    order = {
        "policy": f"{__name__}:Disorder",
        "reorder": reorder,
        "duplicate": duplicate,
        "gap_ms": gap_s * 1000,
    }
    targets: list[str | None] = list(addresses.values()) or [None]
    with queued(
        service,
        handle,
        journal_kind="nfqueue",
        order=order,
        # To a peer: by its address, whichever interface reaches it; else all but loopback.
        matches=[f"-d {a}" if a else "! -o lo" for a in targets],
    ) as worker:
        handle._worker = worker
        yield handle


@fault(
    "disorder",
    grid={"reorder": (10, 25, 50), "duplicate": (0, 5, 20)},
    journal=("nfqueue",),
    leaves=("iptables-chain",),
    requires=("root", "this-kernel", "nfqueue"),
    example="chaos.disorder({service}, [{peer}], reorder=25, duplicate=10)",
)
def _chaos_disorder(
    chaos: Chaos,
    service: str,
    peers: list[str] | None = None,
    *,
    reorder: float = 25,
    duplicate: float = 0,
    gap: float | str = "20ms",
) -> AbstractContextManager[DisorderHandle]:
    """Send what ``service`` sends (to ``peers``, or everything) out of order and
    twice: ``reorder`` % of the packets held back ``gap`` so later ones overtake them,
    ``duplicate`` % sent twice; through a packet worker of ours in its namespace.
    Undo: the chain removed and the worker stopped (what it held is sent)."""
    check(reorder, duplicate, gap)
    target = chaos.service(service)
    others = [chaos.peer(p) for p in peers or []]
    return disorder(target, others, reorder=reorder, duplicate=duplicate, gap=gap)
