"""What every fault shares: the handle it yields, and its journal entry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

if TYPE_CHECKING:
    from ..journal import Entry, Journal
    from ..registry import DeadRuns
    from ..targets.compose import Service
    from ..targets.netns import NetNamespace
    from ..waits import PutOff


@dataclass(frozen=True)
class Effect:
    """Whether a fault acted on its target, and the evidence either way (packets its
    rules dropped, periods its quota throttled, the process it killed exiting...)."""

    took: bool
    evidence: str


@dataclass
class FaultHandle:
    """Base of every fault's handle. ``kind`` and ``target`` name the fault;
    ``applied_at`` is a time.monotonic() reading taken when it took effect."""

    kind: str
    target: str
    applied_at: float = field(default_factory=time.monotonic)
    #: When the fault stopped acting on the target (rules removed, process resumed,
    #: container started again), before the undo waited for the target's health.
    lifted_at: float | None = None
    #: When the undo completed (the target healthy again, where it waits for that).
    undone_at: float | None = None
    #: How the undo restored the target (set by the undo).
    restored_by: str | None = None
    #: Set by whoever lifts the fault when its wait for health is to be put off (an
    #: interruption, a schedule's step): the undo hands that wait to it.
    put_off: PutOff | None = field(default=None, repr=False, compare=False)
    _effect: Effect | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line naming the fault, as the report and the live line show it."""
        return f"{self.kind} {self.target}"

    def effect(self) -> Effect | None:
        """The evidence that this fault took effect: read now while it is in force,
        else the reading taken just before its undo. None: this kind of fault gives
        no such evidence (a fault of your own can override :meth:`measure_effect`)."""
        if self.lifted_at is None and self.undone_at is None:
            self.keep_effect()
        return self._effect

    def measure_effect(self) -> Effect | None:
        """Read the evidence from the target (kernel counters, states); only called
        while the fault is in force."""
        return None

    def keep_effect(self) -> None:
        """Take the reading that :meth:`effect` returns once the fault is undone (a
        fault's undo calls this first: the counters go with the fault)."""
        from ..errors import ChaosError

        try:
            reading = self.measure_effect()
        except (ChaosError, OSError) as exc:  # the target went meanwhile: keep the last
            if self._effect is None:
                self._effect = Effect(False, f"could not be read: {exc}")
            return
        if reading is not None:
            self._effect = reading

    def figures(self) -> dict[str, float | int | str]:
        """Plain numbers and strings for reports (JUnit properties)."""
        out: dict[str, float | int | str] = {"kind": self.kind, "target": self.target}
        lifted = self.lifted_at if self.lifted_at is not None else self.undone_at
        if lifted is not None:
            out["in_force_s"] = round(lifted - self.applied_at, 3)
        if self.undone_at is not None and self.lifted_at is not None:
            out["health_wait_s"] = round(self.undone_at - self.lifted_at, 3)
        if self.restored_by is not None:
            out["restored_by"] = self.restored_by
        if self._effect is not None:
            out["took_effect"] = "yes" if self._effect.took else "no"
            out["effect"] = self._effect.evidence
        return out


def journaled_service(data: dict[str, Any]) -> Service:
    """The service a journal entry names (it may since have stopped or gone), on the
    engine the entry was written against: DockerUnavailable, and nothing undone, when
    that engine cannot be reached (another engine is never asked)."""
    from ..targets.compose import ComposeProject, Service
    from ..targets.engine import client_for

    engine_id = data.get("engine_id")
    client, url = client_for(
        str(engine_id) if engine_id else None, str(data.get("engine_url") or "") or None
    )
    project = ComposeProject(str(data["project"]), client=client, url=url)
    return Service(project, str(data["service"]), str(data["container_id"]))


def running_pid(service: Service) -> int | None:
    """The container's first process (proved to be its process on this kernel), or
    None when the container is stopped or removed (its namespaces, and whatever a
    fault put in them, went with it). Anything short of that proof raises."""
    from ..errors import TargetStopped, UnknownService

    try:
        return service.init_pid()
    except (UnknownService, TargetStopped):
        return None


def target_data(service: Service) -> dict[str, Any]:
    """What a journal undo needs to find ``service`` again, on the same engine."""
    return {
        "project": service.project.name,
        "service": service.name,
        "container_id": service.container_id,
        **service.project.engine_record(),
    }


class JournalSlot:
    """A fault's journal entry: ``note`` adds what became known while applying;
    calling the slot (once the undo completed) clears the entry."""

    def __init__(self, journal: Journal | None, entry: Entry | None) -> None:
        self._journal = journal
        self._entry = entry

    def note(self, **data: Any) -> None:
        if self._journal is not None and self._entry is not None:
            self._entry = self._journal.update(self._entry, data)

    def __call__(self) -> None:
        if self._journal is not None and self._entry is not None:
            self._journal.clear(self._entry)
            self._entry = None


@contextmanager
def journaled(
    service: Service,
    kind: str,
    description: str,
    data: dict[str, Any],
    *,
    durable: bool = True,
) -> Iterator[JournalSlot]:
    """Write the journal entry before the body applies the fault, and hand the body a
    slot to call once its undo completed. An undo that raised never calls it, so its
    entry stays for the next session (or ``--chaos-cleanup``) to retry.
    ``durable=False``: the fault lives only in kernel state, gone with the machine
    (see :meth:`Journal.write`)."""
    with journaled_in(
        service.project.journal,
        kind,
        description,
        {**target_data(service), **data},
        durable=durable,
    ) as slot:
        yield slot


@contextmanager
def journaled_in(
    journal: Journal | None,
    kind: str,
    description: str,
    data: dict[str, Any],
    *,
    durable: bool = True,
) -> Iterator[JournalSlot]:
    """:func:`journaled` for a fault that is not about one service (``journal`` None:
    the fault is not crash-safe, e.g. used outside the chaos fixture)."""
    if journal is None:
        yield JournalSlot(None, None)
        return
    yield JournalSlot(journal, journal.write(kind, description, data, durable=durable))


def dead_runs_containers(dead: DeadRuns) -> Iterator[tuple[str, Any]]:
    """The running containers of the projects the dead runs touched, with their
    ``project/service`` names: where a sweep may look for what those runs left."""
    from ..targets.compose import PROJECT_LABEL, SERVICE_LABEL

    for project in dead.projects:
        containers = dead.client.containers.list(
            filters={"label": f"{PROJECT_LABEL}={project}"}, ignore_removed=True
        )
        for container in containers:
            yield f"{project}/{container.labels.get(SERVICE_LABEL, container.name)}", container


def run_of(name: str, prefix: str) -> str | None:
    """The run id that ``name`` (of something we created: ``<prefix><run>_...``)
    carries, or None when it is not one of ours."""
    if not name.lower().startswith(prefix.lower()):
        return None
    return name[len(prefix) :].split("_")[0].split("-")[0].lower() or None


def in_each_namespace(
    dead: DeadRuns, sweep: Callable[[NetNamespace, str, str], list[str]]
) -> list[str]:
    """``sweep(namespace, name, project)`` in the network namespace of each running
    container of the projects the dead runs touched; a container whose namespace is
    not ours to enter (the host's, a pid not proved the container's), or that went or
    failed meanwhile, is skipped and said: the sweep goes on with the others."""
    from ..errors import ChaosError
    from ..targets.engine import prove
    from ..targets.netns import open_netns

    said = []
    for name, container in dead_runs_containers(dead):
        project = name.split("/")[0]
        try:
            # Only a pid proved to be the container's here (not a remote engine's
            # number, which names another process on this machine).
            pid = prove(container.attrs)
            with open_netns(pid, name) as ns:
                said += sweep(ns, name, project)
        except ChaosError as exc:
            # Not ours to enter (the host's namespace, a process gone meanwhile, a
            # pid not proved the container's): nothing we may touch is there.
            said.append(f"skipped {name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - said; the other containers are swept
            said.append(f"skipped {name}: {type(exc).__name__}: {exc}")
    return said
