"""Root qdiscs on a container's interface, for the faults that set one (bandwidth,
latency through netem): a netlink session inside the container's namespace, the
fault's frame (refusing someone else's root qdisc, removing its own on the way out),
the counters of a qdisc, the journal undo, and the sweep that knows a dead run's
qdisc by its handle.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import FaultError, FaultVanished, UnknownService
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, sweeper, undoer
from ..targets.netns import NetNamespace, netlink_socket, open_netns
from .base import FaultHandle, in_each_namespace, journaled, journaled_service, running_pid

if TYPE_CHECKING:
    from ..targets.compose import Service


@contextlib.contextmanager
def root_qdisc_fault(
    service: Service, interface: str, description: str, handle: FaultHandle | None = None
) -> Iterator[tuple[Any, int]]:
    """A netlink handle on ``interface`` of ``service``, for a fault that sets the root
    qdisc: refused (before anything is journaled or changed) when someone else's root
    qdisc is there; on exit, whatever root qdisc was set is removed, so the default
    comes back."""
    with qdisc_session(service.init_pid(), service.name, interface) as (ipr, index):
        before = root_qdisc(ipr, index)
        if before not in DEFAULT_ROOT_QDISCS:
            raise FaultError(
                f"{service.name} {interface} already has a root qdisc {before!r}; "
                "refusing to replace it (remove it first)."
            )
        with journaled(
            service, "qdisc", description, {"interface": interface}, durable=False
        ) as undone:
            try:
                yield ipr, index
            finally:
                if handle is not None:
                    handle.keep_effect()
                if root_qdisc(ipr, index) not in DEFAULT_ROOT_QDISCS:
                    delete_root(ipr, index)
                if handle is not None:
                    handle.lifted_at = time.monotonic()
                undone()


DEFAULT_ROOT_QDISCS = frozenset({"noqueue", "pfifo_fast", "fq_codel", "mq", None})
#: The root qdiscs our faults set: tbf (bandwidth), netem, prio over netem (latency).
OUR_KINDS = frozenset({"tbf", "netem", "prio"})


def qdisc_major(run_id: str | None) -> int:
    """The major number of the root qdiscs a run sets: 0x4000 plus 12 bits of its id
    (0x4000-0x4fff), so that a sweep tells a dead run's qdisc from anyone else's. It
    is outside the kernel's own range for a qdisc added without a handle (0x8000 and
    up), and ``1:``, ``10:`` or ``ffff:`` are never ours."""
    try:
        bits = int((run_id or "")[:3], 16)
    except ValueError:
        return 0x4000
    return 0x4000 | (bits & 0x0FFF)


def root_major(service: Service) -> int:
    """:func:`qdisc_major` of the run applying a fault to ``service``."""
    journal = service.project.journal
    return qdisc_major(journal.run_id if journal is not None else None)


@sweeper("qdisc")
def _sweep_qdiscs(dead: DeadRuns) -> list[str]:
    from pyroute2 import IPRoute

    # A live run's qdisc has its own major: where a dead run's is the same (12 bits of
    # two ids alike), nothing tells them apart, and it is left alone.
    live = {qdisc_major(run) for run in dead.alive}

    def sweep(ns: NetNamespace, name: str, project: str) -> list[str]:
        ours = {qdisc_major(run): run for run in dead.runs if dead.owns(run, project)}
        said = []
        with contextlib.closing(IPRoute(fileno=netlink_socket(ns).detach())) as ipr:
            for msg in ipr.get_qdiscs():
                major, kind = int(msg["handle"]) >> 16, msg.get_attr("TCA_KIND")
                run = ours.get(major)
                if msg["parent"] != 0xFFFFFFFF or run is None or kind not in OUR_KINDS:
                    continue
                if major in live:
                    said.append(f"left {name}: root qdisc {kind} alone (a live run's too)")
                    continue
                delete_root(ipr, int(msg["index"]))
                said.append(f"swept {name}: root qdisc {kind} (run {run}, whose pytest is gone)")
        return said

    return in_each_namespace(dead, sweep)


def qdisc_stats(ipr: Any, index: int, kind: str) -> dict[str, int]:
    """The counters of the (first) qdisc of ``kind`` on the interface: packets,
    bytes, drops, overlimits (packets held back: over a rate, or delayed)."""
    for msg in ipr.get_qdiscs(index=index):
        if msg.get_attr("TCA_KIND") == kind:
            stats = msg.get_attr("TCA_STATS") or {}
            return {
                k: int(stats.get(k, 0) or 0) for k in ("packets", "bytes", "drop", "overlimits")
            }
    raise FaultVanished(f"the {kind} qdisc is no longer on the interface.")


def delete_root(ipr: Any, index: int) -> None:
    """Remove the interface's root qdisc (the default comes back), named by its own
    handle: netlink refuses a deletion whose handle is not the qdisc's (EINVAL)."""
    for msg in ipr.get_qdiscs(index=index):
        if msg["parent"] == 0xFFFFFFFF:
            ipr.tc("del", index=index, root=True, handle=int(msg["handle"]))
            return


def root_qdisc(ipr: Any, index: int) -> str | None:
    for msg in ipr.get_qdiscs(index=index):
        if msg["parent"] == 0xFFFFFFFF:
            return str(msg.get_attr("TCA_KIND"))
    return None


@contextlib.contextmanager
def qdisc_session(pid: int, owner: str, interface: str) -> Iterator[tuple[Any, int]]:
    """A pyroute2 handle inside ``pid``'s network namespace (checked not to be the
    host's), and the index of ``interface`` there."""
    from pyroute2 import IPRoute

    with open_netns(pid, owner) as ns:
        # pyroute2's own NetNS forks a child to enter the namespace; a socket opened
        # in the namespace by a thread of ours needs no fork.
        ipr = IPRoute(fileno=netlink_socket(ns).detach())
        try:
            found = ipr.link_lookup(ifname=interface)
            if not found:
                raise UnknownService(f"{owner} has no interface {interface!r}.")
            yield ipr, int(found[0])
        finally:
            ipr.close()


@undoer("qdisc")
def _undo_qdisc(data: dict[str, Any]) -> str:
    service = journaled_service(data)
    pid = running_pid(service)
    if pid is None:
        return "its container is not running; the qdisc went with its namespace"
    with qdisc_session(pid, service.name, str(data["interface"])) as (ipr, index):
        if root_qdisc(ipr, index) in DEFAULT_ROOT_QDISCS:
            if not data.get("applied"):
                return "the qdisc was never added: nothing to undo"
            return "the qdisc was already gone"
        delete_root(ipr, index)
    return f"removed the root qdisc of {data['interface']}"
