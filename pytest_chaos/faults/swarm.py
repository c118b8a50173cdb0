"""Faults of a node of a multi-node Docker Swarm (``--chaos-backend swarm``):

- ``chaos.partition_node(node)``: cut the node off from the other nodes (their control
  plane, gossip and overlay traffic alike); clients still reach it, so a task it keeps
  running after Swarm replaced it elsewhere serves beside its replacement: a split
  brain. Undo: the rules go, and Swarm converges.
- ``chaos.split_cluster(group)``: the nodes of ``group`` cut off from all the others:
  the cluster in two parts, each whole within itself.
- ``chaos.crash_node(node)``: the node loses its power: its engine, containerd and
  tasks are killed together. Undo: its engine boots
    again and rejoins the swarm, and Swarm reconciles its tasks.
- ``chaos.freeze_node(node)``: the node hangs, engine and tasks together (cgroup
  freezer): to its peers it is lost. Undo: it thaws.

Each is journaled like every fault; importing this module also registers the undo
of a local swarm left behind by a pytest that died (journal kind ``swarm-cluster``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, FaultError, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, fault, sweeper, undoer
from ..targets import swarm_nodes, swarm_teardown
from ..targets.cgroup import cgroup_roots
from ..targets.netns import NetNamespace
from .base import Effect, FaultHandle, journaled_in

if TYPE_CHECKING:
    from ..chaos import Chaos
    from ..targets.swarm_nodes import LocalSwarm, Node

__all__ = ["crash_node", "freeze_node", "partition_node", "split_cluster", "swarm_nodes"]


def _cluster(chaos: Chaos) -> LocalSwarm:
    from ..targets.swarm_nodes import LocalSwarm

    cluster = getattr(chaos.project, "cluster", None)
    if cluster is None:
        raise ConfigurationError(
            "node faults act on a swarm's nodes: run with --chaos-backend swarm."
        )
    if not isinstance(cluster, LocalSwarm):
        raise ConfigurationError(
            "node faults act on the nodes of a local swarm (their namespaces and cgroups "
            "are this machine's); the nodes of an attached swarm are machines of their own."
        )
    return cluster


@contextmanager
def _node_netns(netns: str) -> Iterator[NetNamespace]:
    """A node's network namespace, by its name; never the host's or pytest's own."""
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnsafeTarget(f"the node's network namespace {netns} is gone.") from None
    try:
        inode = os.fstat(fd).st_ino
        if inode == os.stat("/proc/self/ns/net").st_ino:
            raise UnsafeTarget(f"refusing to change pytest's own network namespace ({netns}).")
        yield NetNamespace(fd, inode, netns)
    finally:
        os.close(fd)


# -- partition ---------------------------------------------------------------------------


@dataclass
class NodePartitionHandle(FaultHandle):
    """A node cut off from its peers: which, and the packets the rules dropped."""

    netns: str = ""
    table: str = ""
    peers: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"partition node {self.target} from {', '.join(self.peers)}"

    def dropped(self) -> int:
        with _node_netns(self.netns) as ns:
            data = json.loads(ns.run(["nft", "-j", "list", "table", "inet", self.table]))
        return sum(
            int(expr["counter"].get("packets", 0))
            for item in data.get("nftables", [])
            for expr in item.get("rule", {}).get("expr", [])
            if "counter" in expr
        )

    def measure_effect(self) -> Effect:
        packets = self.dropped()
        if packets:
            return Effect(True, f"{packets} packet(s) between {self.target} and its peers dropped")
        return Effect(False, f"no packet between {self.target} and its peers was dropped")

    def figures(self) -> dict[str, float | int | str]:
        out = super().figures()
        with contextlib.suppress(Exception):
            out["node_packets_dropped"] = self.dropped()
        return out


def _partition_rules(table: str, peers: list[str]) -> str:
    addresses = ", ".join(peers)
    return (
        f"table inet {table} {{\n"
        "  chain input { type filter hook input priority -300; policy accept;\n"
        f"    ip saddr {{ {addresses} }} counter drop\n  }}\n"
        "  chain output { type filter hook output priority -300; policy accept;\n"
        f"    ip daddr {{ {addresses} }} counter drop\n  }}\n"
        "}\n"
    )


@contextmanager
def partition_node(
    cluster: LocalSwarm, node: str, *, journal: Any = None, peers: list[str] | None = None
) -> Iterator[NodePartitionHandle]:
    """Drop every packet between ``node`` and the other nodes (or ``peers``), in the
    node's own network namespace."""
    target = cluster.node(node)
    others = [n for n in cluster.nodes if n.name != node]
    if peers is not None:
        others = [cluster.node(p) for p in peers if p != node]
    if not others:
        raise ConfigurationError(f"node {node!r} has no peer to be cut off from.")
    table = f"pytest_chaos_node_{cluster.run_id}_{target.name}"
    handle = NodePartitionHandle(
        kind="partition_node",
        target=node,
        netns=target.netns,
        table=table,
        peers=tuple(n.name for n in others),
    )
    data = {"netns": target.netns, "table": table}
    rules = _partition_rules(table, [n.address for n in others])
    entry = journaled_in(journal, "swarm-node-partition", handle.describe(), data, durable=False)
    with entry as undone, _node_netns(target.netns) as ns:
        try:
            cluster.unavailable.add(node)
            ns.run(["nft", "-f", "-"], input_text=rules)
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            _delete_table(ns, table)
            cluster.unavailable.discard(node)
            handle.lifted_at = handle.undone_at = time.monotonic()
            undone()


def _delete_table(ns: NetNamespace, table: str) -> bool:
    if f"table inet {table}" not in ns.run(["nft", "list", "tables"]):
        return False
    ns.run(["nft", "delete", "table", "inet", table])
    return True


@undoer("swarm-node-partition")
def _undo_partition(data: dict[str, Any]) -> str:
    try:
        with _node_netns(str(data["netns"])) as ns:
            removed = _delete_table(ns, str(data["table"]))
    except UnsafeTarget:
        return "the node's namespace is gone, and its rules with it"
    return f"removed nft table {data['table']}" if removed else "the table was already gone"


@dataclass
class SplitHandle(FaultHandle):
    """The cluster split in two: each node of ``group`` cut off from each of ``rest``."""

    group: tuple[str, ...] = ()
    rest: tuple[str, ...] = ()
    parts: list[NodePartitionHandle] = field(default_factory=list)

    def describe(self) -> str:
        return f"split the swarm: {', '.join(self.group)} | {', '.join(self.rest)}"

    def measure_effect(self) -> Effect:
        dropped = [p.dropped() for p in self.parts]
        if all(dropped):
            return Effect(True, f"{sum(dropped)} packet(s) between the two sides dropped")
        quiet = [p.target for p, n in zip(self.parts, dropped, strict=True) if not n]
        return Effect(False, f"no packet dropped between {', '.join(quiet)} and the other side")


@contextmanager
def split_cluster(
    cluster: LocalSwarm, group: list[str], *, journal: Any = None
) -> Iterator[SplitHandle]:
    """Split the swarm in two: every node of ``group`` is cut off from every node not
    in it (each side still talks within itself). The side with the managers' majority
    carries on; the other cannot."""
    if isinstance(group, str) or not group:
        raise ConfigurationError(
            f"split_cluster takes a non-empty list of node names, not {group!r}."
        )
    names = [cluster.node(n).name for n in group]
    rest = [n.name for n in cluster.nodes if n.name not in names]
    if not rest:
        raise ConfigurationError("split_cluster: every node is in the group; nothing to split.")
    handle = SplitHandle(
        kind="split_cluster", target=" | ".join((", ".join(names), ", ".join(rest))),
        group=tuple(names), rest=tuple(rest),
    )  # fmt: skip
    with ExitStack() as stack:
        for name in names:
            handle.parts.append(
                stack.enter_context(partition_node(cluster, name, journal=journal, peers=rest))
            )
        handle.applied_at = time.monotonic()
        try:
            yield handle
        finally:
            handle.keep_effect()
            stack.close()
            handle.lifted_at = handle.undone_at = time.monotonic()


# -- freeze ------------------------------------------------------------------------------


@dataclass
class NodeFreezeHandle(FaultHandle):
    """A node hung: its engine and its tasks frozen."""

    groups: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"freeze node {self.target}"

    def measure_effect(self) -> Effect:
        frozen = [g for g in self.groups if _is_frozen(Path(g))]
        if frozen and len(frozen) == len(self.groups):
            return Effect(True, f"its engine and tasks are frozen ({len(frozen)} cgroups)")
        return Effect(False, f"{len(self.groups) - len(frozen)} of its cgroups are not frozen")


def _freezable(node: Node) -> list[Path]:
    """The cgroups that hold everything of the node: its engine's own (freezable
    through ``cgroup.freeze`` in the unified hierarchy) and its tasks' parent in the
    v1 freezer hierarchy (or the unified one)."""
    groups: list[Path] = []
    for base in cgroup_roots():
        for path in (Path(node.own_cgroup), base / node.cgroup_parent):
            if path.is_relative_to(base) and path.is_dir() and _freeze_file(path) is not None:
                groups.append(path)
    return sorted(set(groups))


def _freeze_file(group: Path) -> Path | None:
    for name in ("cgroup.freeze", "freezer.state"):
        if (group / name).exists():
            return group / name
    return None


def _set_frozen(group: Path, frozen: bool) -> None:
    file = _freeze_file(group)
    if file is None:
        return
    if file.name == "cgroup.freeze":
        file.write_text("1" if frozen else "0")
    else:
        file.write_text("FROZEN" if frozen else "THAWED")


def _is_frozen(group: Path) -> bool:
    file = _freeze_file(group)
    if file is None:
        return False
    if file.name == "cgroup.freeze":
        events = (group / "cgroup.events").read_text()
        return "frozen 1" in events
    return file.read_text().strip() == "FROZEN"


@contextmanager
def freeze_node(
    cluster: LocalSwarm, node: str, *, journal: Any = None
) -> Iterator[NodeFreezeHandle]:
    """Freeze everything ``node`` runs (its engine, containerd, shims and tasks): to its
    peers the node is lost, as a machine that hangs. Undo: thaw."""
    target = cluster.node(node)
    groups = _freezable(target)
    if not groups:
        raise FaultError(f"node {node!r} has no cgroup that can be frozen.")
    handle = NodeFreezeHandle(kind="freeze_node", target=node, groups=tuple(map(str, groups)))
    data = {"groups": [str(g) for g in groups]}
    with journaled_in(
        journal, "swarm-node-freeze", handle.describe(), data, durable=False
    ) as undone:
        try:
            cluster.unavailable.add(node)
            for group in groups:
                _set_frozen(group, True)
            deadline = time.monotonic() + 10
            while not all(_is_frozen(g) for g in groups):
                if time.monotonic() > deadline:
                    raise FaultError(f"node {node!r} did not freeze within 10 s.")
                time.sleep(0.01)  # poll interval while the kernel freezes the tasks
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            for group in groups:
                with contextlib.suppress(OSError):
                    _set_frozen(group, False)
            cluster.unavailable.discard(node)
            handle.lifted_at = handle.undone_at = time.monotonic()
            undone()


@undoer("swarm-node-freeze")
def _undo_freeze(data: dict[str, Any]) -> str:
    thawed = []
    for group in map(Path, data.get("groups", [])):
        if group.is_dir():
            with contextlib.suppress(OSError):
                _set_frozen(group, False)
                thawed.append(str(group))
    return f"thawed {', '.join(thawed)}" if thawed else "the node's cgroups are gone"


# -- crash -------------------------------------------------------------------------------


@dataclass
class NodeCrashHandle(FaultHandle):
    """A node lost: every process of it killed (``processes``), booted again by the undo."""

    processes: int = 0
    #: The engine that was killed: its pid and start time (its identity).
    engine_pid: int = 0
    _engine_start: str = ""

    def describe(self) -> str:
        return f"crash node {self.target}"

    def measure_effect(self) -> Effect:
        from ..targets import linux

        if self.processes and not linux.is_alive(self.engine_pid, self._engine_start):
            return Effect(
                True, f"{self.processes} process(es) killed, engine pid {self.engine_pid} gone"
            )
        return Effect(False, f"engine pid {self.engine_pid} still runs")

    def figures(self) -> dict[str, float | int | str]:
        return {**super().figures(), "node_processes_killed": self.processes}


@contextmanager
def crash_node(
    cluster: LocalSwarm, node: str, *, journal: Any = None, boot_timeout: float = 90.0
) -> Iterator[NodeCrashHandle]:
    """Lose ``node`` as a machine that loses its power: its engine, containerd, shims
    and tasks are killed together; its disk and swarm membership stay. Undo: its
    engine boots again and rejoins the swarm, and Swarm reconciles its tasks."""
    target = cluster.node(node)
    if target.pid == 0:
        raise ConfigurationError(f"node {node!r} has no engine running: is the swarm up?")
    handle = NodeCrashHandle(
        kind="crash_node", target=node, engine_pid=target.pid, _engine_start=target.start
    )
    # The cluster's own entry tears it all down after a kill -9: a node crashed then
    # goes with it. This entry says the node was down, for the journal's report.
    data = {"netns": target.netns, "run": cluster.run_id}
    with journaled_in(journal, "swarm-node-crash", handle.describe(), data) as undone:
        try:
            handle.processes = cluster.crash(node)
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            handle.lifted_at = time.monotonic()
            cluster.boot(node, timeout=boot_timeout)
            handle.undone_at = time.monotonic()
            handle.restored_by = "pytest-chaos"
            undone()


@undoer("swarm-node-crash")
def _undo_crash(data: dict[str, Any]) -> str:
    return (
        f"nothing to boot: node namespace {data.get('netns')} goes with its swarm, which "
        "its own journal entry tears down"
    )


# -- chaos.<fault> -----------------------------------------------------------------------


@sweeper("swarm-node")
def _sweep_swarms(dead: DeadRuns) -> list[str]:
    """Tear down the local swarms of the dead runs (everything of one is named after
    its run: namespaces, cgroups, directories), nodes and node faults with them."""
    said = []
    for run in sorted(dead.runs):
        leftovers = [swarm_teardown.STATE_DIR / run, swarm_teardown.RUN_DIR / run]
        if not run.isalnum() or not any(path.exists() for path in leftovers):
            continue
        # Whatever its size was: the nodes it did not have are not there to remove.
        cluster = swarm_nodes.LocalSwarm(run, size=9, managers=1)
        said.append(
            f"swept the local swarm of run {run}: {swarm_teardown.teardown(cluster.data())}"
        )
    return said


@fault(
    "partition_node",
    journal=("swarm-node-partition",),
    leaves=("swarm-node",),
    requires=("root", "local-swarm"),
    example="chaos.partition_node({node})",
)
def _chaos_partition_node(
    chaos: Chaos, node: str, *, peers: list[str] | None = None
) -> AbstractContextManager[NodePartitionHandle]:
    """Cut swarm node ``node`` off from the other nodes (or from ``peers``
    only). Undo: its rules removed."""
    cluster = _cluster(chaos)
    return partition_node(cluster, node, journal=chaos.project.journal, peers=peers)


@fault(
    "split_cluster",
    journal=("swarm-node-partition",),
    leaves=("swarm-node",),
    requires=("root", "local-swarm"),
    example="chaos.split_cluster([{node}])",
)
def _chaos_split_cluster(chaos: Chaos, group: list[str]) -> AbstractContextManager[SplitHandle]:
    """Split the swarm in two: the nodes of ``group`` from all the others.
    Undo: the rules removed on both sides."""
    cluster = _cluster(chaos)
    return split_cluster(cluster, group, journal=chaos.project.journal)


@fault(
    "freeze_node",
    journal=("swarm-node-freeze",),
    leaves=("swarm-node",),
    requires=("root", "local-swarm"),
    example="chaos.freeze_node({node})",
)
def _chaos_freeze_node(chaos: Chaos, node: str) -> AbstractContextManager[NodeFreezeHandle]:
    """Freeze swarm node ``node``, engine and tasks: to its peers it is lost.
    Undo: thawed."""
    cluster = _cluster(chaos)
    return freeze_node(cluster, node, journal=chaos.project.journal)


@fault(
    "crash_node",
    journal=("swarm-node-crash",),
    leaves=("swarm-node",),
    requires=("root", "local-swarm"),
    example="chaos.crash_node({node})",
)
def _chaos_crash_node(chaos: Chaos, node: str) -> AbstractContextManager[NodeCrashHandle]:
    """Lose swarm node ``node``: its engine and tasks killed at once (a power
    cut). Undo: its engine boots
    again and rejoins the swarm, and Swarm reconciles its tasks."""
    cluster = _cluster(chaos)
    return crash_node(cluster, node, journal=chaos.project.journal, boot_timeout=chaos.timeout)
