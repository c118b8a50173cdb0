"""Collateral damage: the services of the project that exited, were killed by the OOM
killer, restarted or became unhealthy during a test, besides the ones its faults
were aimed at. A queue killed by a fault can take a worker down with it (no
reconnect, no restart policy); the test's own assertions may never look there, so
the report does, from what Docker recorded."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Docker's container events that mean harm, and how the report says each.
HARM = {
    "die": "exited",
    "oom": "OOM-killed",
    "health_status: unhealthy": "unhealthy",
    "start": "started again",
}


@dataclass
class Damage:
    """What happened to one service (or task) during the test."""

    service: str
    #: (wall-clock seconds, what) in order.
    events: list[tuple[float, str]] = field(default_factory=list)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for _, what in self.events:
            counts[what] = counts.get(what, 0) + 1
        said = ", ".join(f"{what} x{n}" if n > 1 else what for what, n in counts.items())
        return f"{self.service}: {said}"


def damage_from(
    events: Iterable[Mapping[str, Any]], targets: Collection[str], service_label: str
) -> list[Damage]:
    """The damage that Docker's container ``events`` show, service by service, less the
    services in ``targets`` (a fault's target is a service, or one task of it:
    ``web.2``, ``web@node2``). A ``start`` counts only after a ``die`` of the same
    service (a restart), not a container's first start."""
    aimed = {_service_of(t) for t in targets}
    found: dict[str, Damage] = {}
    died: set[str] = set()
    for event in sorted(events, key=lambda e: int(e.get("timeNano") or 0)):
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        service = str(attributes.get(service_label) or "")
        action = str(event.get("Action") or event.get("status") or "")
        if not service or service in aimed or action not in HARM:
            continue
        if action == "start" and service not in died:
            continue
        if action == "die":
            died.add(service)
            code = attributes.get("exitCode")
            what = f"exited ({code})" if code not in (None, "") else "exited"
        else:
            what = HARM[action]
        wall = int(event.get("timeNano") or 0) / 1e9
        found.setdefault(service, Damage(service)).events.append((wall, what))
    return sorted(found.values(), key=lambda d: d.service)


def _service_of(target: str) -> str:
    """``web.2`` and ``web@node2`` name a task of ``web``; ``web`` is the service."""
    base = target.split("@", 1)[0]
    head, dot, number = base.rpartition(".")
    return head if dot and head and number.isdigit() else base


def collateral(
    client: Any, project_label: str, project: str, service_label: str,
    since: float, targets: Collection[str], until: float | None = None,
) -> list[Damage]:  # fmt: skip
    """The damage Docker recorded for the project's containers between ``since`` and
    ``until`` (wall clock), its faults' ``targets`` left out."""
    from ..targets.compose import docker_time

    stream = client.events(
        since=docker_time(since),
        until=docker_time(until or time.time()),
        filters={"type": "container", "label": f"{project_label}={project}"},
        decode=True,
    )
    try:
        return damage_from(list(stream), targets, service_label)
    finally:
        stream.close()
