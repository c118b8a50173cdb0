"""Partitions and packet loss inside a service's own network namespace: nftables rules
in a table of our own (``pytest_chaos_<run id>_<n>``), so the compose network, its
DNS and the container's other rules stay as they were; their journal undo, and the
sweep that finds a dead run's tables by name. (A peer's address, for every fault
aimed at some peers: :func:`peer_addresses`.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, FaultError, FaultVanished
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, fault, sweeper, undoer
from ..targets.compose import Service
from ..targets.netns import NetNamespace, open_netns
from .base import (
    Effect,
    FaultHandle,
    in_each_namespace,
    journaled,
    journaled_service,
    running_pid,
)

if TYPE_CHECKING:
    from ..chaos import Chaos

MODES = ("drop", "reject")
DIRECTIONS = ("both", "egress", "ingress")
TABLE_PREFIX = "pytest_chaos_"


@dataclass
class NetworkHandle(FaultHandle):
    """A partition or loss in force: what it matches, and its packet counters."""

    table: str = ""
    peers: dict[str, str] = field(default_factory=dict)
    mode: str = "drop"
    direction: str = "both"
    percent: float | None = None
    _pid: int = 0

    def describe(self) -> str:
        whom = ", ".join(self.peers) or "all peers"
        what = f"loss {self.percent:g}%" if self.percent is not None else f"partition ({self.mode})"
        return f"{what} {self.target} <-> {whom} [{self.direction}]"

    def matched_packets(self) -> int:
        """Packets the rules dropped or rejected so far (nft counters)."""
        with open_netns(self._pid, self.target) as ns:
            return _table_packets(ns, self.table)

    def measure_effect(self) -> Effect:
        packets = self.matched_packets()
        verb = "rejected" if self.mode == "reject" else "dropped"
        return Effect(packets > 0, f"{packets} packets {verb} by its rules")

    def figures(self) -> dict[str, float | int | str]:
        out = {**super().figures(), "mode": self.mode, "direction": self.direction}
        out["peers"] = ",".join(self.peers) or "all"
        if self.percent is not None:
            out["percent"] = self.percent
        return out


# -- validation ------------------------------------------------------------------------


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    return mode


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigurationError(
            f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}."
        )
    return direction


def check_percent(percent: float | int | str) -> float:
    try:
        value = float(str(percent).strip().rstrip("%"))
    except ValueError:
        raise ConfigurationError(
            f"loss must be a percentage such as 10 or '10%', not {percent!r}."
        ) from None
    if isinstance(percent, bool) or not 0 < value <= 100:
        raise ConfigurationError(f"loss must be above 0% and at most 100%, got {percent!r}.")
    return value


def peer_addresses(service: Service, peers: Sequence[Service | str]) -> dict[str, str]:
    """Each peer's IPv4 address by name. The service itself is no peer: its traffic
    to itself goes over loopback, which no fault touches, so the fault could never
    bite."""
    out: dict[str, str] = {}
    for peer in peers:
        if isinstance(peer, Service):
            if peer.name == service.name:
                raise _self_peer(service)
            out[peer.name] = peer.address()
            continue
        try:
            out[str(peer)] = str(ipaddress.IPv4Address(str(peer)))
        except ValueError:
            raise ConfigurationError(
                f"peer {peer!r} is neither a service nor an IPv4 address."
            ) from None
        if out[str(peer)] in service.addresses():
            raise _self_peer(service)
    return out


def _self_peer(service: Service) -> ConfigurationError:
    return ConfigurationError(
        f"{service.name!r} is among its own peers: a service's traffic to itself stays on "
        "loopback, out of any fault's reach; name the other services, or none for all."
    )


# -- nftables --------------------------------------------------------------------------


def _table_name(service: Service) -> str:
    journal = service.project.journal
    run = journal.run_id if journal is not None else "norun"
    return f"{TABLE_PREFIX}{run}_{secrets.token_hex(3)}"


def _ruleset(table: str, addresses: list[str], *, verdicts: dict[str, str], match: str) -> str:
    """A table whose output chain matches traffic to ``addresses`` (egress) and input
    chain traffic from them (ingress); ``match`` is an extra condition (e.g. random
    loss). No addresses: everything but loopback."""
    lines = [f"table inet {table} {{"]
    for chain, hook, field_, iface in (
        ("egress", "output", "daddr", "oifname"),
        ("ingress", "input", "saddr", "iifname"),
    ):
        verdict = verdicts.get(chain)
        if verdict is None:
            continue
        who = f"ip {field_} {{ {', '.join(addresses)} }}" if addresses else f'{iface} != "lo"'
        lines += [
            f"  chain {chain} {{",
            f"    type filter hook {hook} priority -10; policy accept;",
        ]
        if verdict == "reject":
            lines.append(f"    {who} {match} meta l4proto tcp counter reject with tcp reset")
            lines.append(f"    {who} {match} counter reject")
        else:
            lines.append(f"    {who} {match} counter drop")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _delete_table(ns: NetNamespace, table: str) -> bool:
    listed = ns.run(["nft", "list", "tables"])
    if f"inet {table}" not in listed.split("\n") and f"table inet {table}" not in listed:
        return False
    ns.run(["nft", "delete", "table", "inet", table])
    return True


def _table_packets(ns: NetNamespace, table: str) -> int:
    data = json.loads(ns.run(["nft", "-j", "list", "table", "inet", table]))
    total = 0
    for item in data.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += int(expr["counter"].get("packets", 0))
    return total


@contextmanager
def _nft_fault(
    service: Service,
    handle: NetworkHandle,
    addresses: list[str],
    verdicts: dict[str, str],
    match: str,
) -> Iterator[NetworkHandle]:
    pid = service.init_pid()
    handle._pid = pid
    with (
        open_netns(pid, service.name) as ns,
        # The table lives in the kernel only: a crash of the machine takes it along.
        journaled(
            service, "nft-table", handle.describe(), {"table": handle.table}, durable=False
        ) as undone,
    ):
        try:
            ns.run(
                ["nft", "-f", "-"],
                input_text=_ruleset(handle.table, addresses, verdicts=verdicts, match=match),
            )
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            # The namespace is pinned: the table is still there even if the container
            # restarted meanwhile, unless someone else removed it.
            removed: bool | None = None
            with contextlib.suppress(FaultError):
                removed = _delete_table(ns, handle.table)
            handle.lifted_at = time.monotonic()
            if handle.table in ns.run(["nft", "list", "tables"]):
                raise FaultError(
                    f"nft table {handle.table} is still in {service.name}'s namespace."
                )
            handle.undone_at = time.monotonic()
            undone()
            if removed is False:
                raise FaultVanished(
                    f"the {handle.describe()} was gone before its undo: nft table "
                    f"{handle.table} had been removed from {service.name}'s namespace by "
                    "something else (another pytest --chaos-cleanup, an operator), so this "
                    "test did not run under the fault it asked for."
                )


def _verdicts(mode: str, direction: str) -> dict[str, str]:
    chains = ("egress", "ingress") if direction == "both" else (direction,)
    return {chain: mode for chain in chains}


@contextmanager
def partition(
    service: Service,
    peers: Sequence[Service | str] = (),
    *,
    mode: str = "drop",
    direction: str = "both",
) -> Iterator[NetworkHandle]:
    """Cut ``service`` off from ``peers`` (services or IPv4 addresses; none: from
    everything but loopback). ``drop`` makes connections time out, ``reject``
    refuses them at once. Names keep resolving: Docker's DNS is on loopback."""
    check_mode(mode)
    check_direction(direction)
    addresses = peer_addresses(service, peers)
    handle = NetworkHandle(
        kind="partition",
        target=service.label,
        table=_table_name(service),
        peers=addresses,
        mode=mode,
        direction=direction,
    )
    with _nft_fault(service, handle, list(addresses.values()), _verdicts(mode, direction), ""):
        yield handle


@contextmanager
def loss(
    service: Service,
    percent: float | int | str,
    peers: Sequence[Service | str] = (),
    *,
    direction: str = "both",
) -> Iterator[NetworkHandle]:
    """Drop ``percent`` of the packets between ``service`` and ``peers`` (none: all
    but loopback), chosen at random per packet (nftables numgen; no netem needed)."""
    value = check_percent(percent)
    check_direction(direction)
    addresses = peer_addresses(service, peers)
    handle = NetworkHandle(
        kind="loss",
        target=service.label,
        table=_table_name(service),
        peers=addresses,
        mode="drop",
        direction=direction,
        percent=value,
    )
    # numgen draws 0..9999 per packet: basis points give 0.01% resolution.
    basis_points = round(value * 100)
    match = f"numgen random mod 10000 < {basis_points}" if basis_points < 10000 else ""
    with _nft_fault(service, handle, list(addresses.values()), _verdicts("drop", direction), match):
        yield handle


@undoer("nft-table")
def _undo_table(data: dict[str, Any]) -> str:
    service = journaled_service(data)
    pid = running_pid(service)
    if pid is None:
        return "its container is not running; the table went with its namespace"
    with open_netns(pid, service.name) as ns:
        removed = _delete_table(ns, str(data["table"]))
    if removed:
        return f"removed nft table {data['table']}"
    if not data.get("applied"):
        return "the table was never created: nothing to undo"
    return "the table was already gone"


def sweep_tables(client: Any, dead_runs: Mapping[str, Collection[str]]) -> list[str]:
    """Layer 5 of teardown, what the journal missed: delete our nft tables (found by
    name) of the ``dead_runs`` (run id -> the compose projects it touched; the
    journal's proof that the run was ours and its pytest is gone), only from the
    running containers of those projects. Tables of any other run, live or another
    journal's, are left alone. Returns a line per table removed, per table left
    alone, and per container skipped (e.g. one on the host's network)."""
    return _sweep_tables(DeadRuns(dead_runs, client))


@sweeper("nft-table")
def _sweep_tables(dead: DeadRuns) -> list[str]:
    return in_each_namespace(
        dead, lambda ns, name, project: _sweep_namespace(ns, name, project, dead)
    )


def _sweep_namespace(ns: NetNamespace, name: str, project: str, dead: DeadRuns) -> list[str]:
    said = []
    for line in ns.run(["nft", "list", "tables"]).splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(TABLE_PREFIX):
            continue
        run = parts[2][len(TABLE_PREFIX) :].split("_")[0]
        if dead.owns(run, project):
            ns.run(["nft", "delete", "table", parts[1], parts[2]])
            said.append(f"swept {name}: {parts[2]} (run {run}, whose pytest is gone)")
        else:
            said.append(
                f"left {name}: {parts[2]} alone (run {run} is not a dead run of this "
                "journal: live, or another journal's)"
            )
    return said


# -- chaos.<fault> -----------------------------------------------------------------------


@fault(
    "partition",
    grid={},
    journal=("nft-table",),
    leaves=("nft-table",),
    requires=("root", "this-kernel"),
    example="chaos.partition({service}, [{peer}])",
)
def _chaos_partition(
    chaos: Chaos,
    service: str,
    peers: list[str] | None = None,
    *,
    mode: str = "drop",
    direction: str = "both",
) -> AbstractContextManager[NetworkHandle]:
    """Cut ``service`` off from ``peers`` (service names or IPv4 addresses; None:
    everything but loopback) with nftables rules in a table of ours inside its network
    namespace: mode ``drop`` makes connections time out, ``reject`` refuses them;
    direction ``both``, ``egress`` or ``ingress``; names keep resolving. Undo: the
    table is deleted."""
    check_mode(mode)
    check_direction(direction)
    target = chaos.service(service)
    others = [chaos.peer(p) for p in peers or []]
    return partition(target, others, mode=mode, direction=direction)


@fault(
    "loss",
    grid={"percent": (10, 30, 60, 100)},
    journal=("nft-table",),
    leaves=("nft-table",),
    requires=("root", "this-kernel"),
    example="chaos.loss({service}, 30, [{peer}])",
)
def _chaos_loss(
    chaos: Chaos,
    service: str,
    percent: float | str,
    peers: list[str] | None = None,
    *,
    direction: str = "both",
) -> AbstractContextManager[NetworkHandle]:
    """Drop ``percent`` of the packets between ``service`` and ``peers`` at random
    (nftables ``numgen``; no netem needed). Undo: the table is deleted."""
    check_percent(percent)
    check_direction(direction)
    target = chaos.service(service)
    others = [chaos.peer(p) for p in peers or []]
    return loss(target, percent, others, direction=direction)
