"""Services of a stack deployed on a Docker Swarm (``docker stack deploy``), resolved to
their tasks: a service's name is its name in the stack file; it stands for one running
task (the lowest slot), whose container runs on whichever node Swarm put it. The task's
processes, namespace and cgroups are this kernel's, so every fault of the compose
backend acts on a task the same way; what differs is who brings a service back (Swarm
replaces a dead task with a new one, maybe elsewhere) and how the host reaches a
published port (a relay on loopback: ``relay.py``). Deploying a stack on a local
swarm: ``swarm_deploy.py``."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    ChaosError,
    ConfigurationError,
    RecoveryTimeout,
    TargetStopped,
    UnknownService,
    UnsafeTarget,
)
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..observe.recovery import wait_for_recovery
from .compose import ComposeProject, Service, _is_healthy, split_task
from .engine import proof_error
from .relay import Relay

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from ..journal import Journal
    from .swarm_nodes import ClusterView

STACK_LABEL = "com.docker.stack.namespace"
TASK_SERVICE_LABEL = "com.docker.swarm.service.name"
TASK_SLOT_LABEL = "com.docker.swarm.task.name"


@dataclass(frozen=True)
class Task:
    """One running task of a service: its slot, node and container."""

    service: str
    slot: int
    node: str
    container_id: str


class SwarmProject(ComposeProject):
    """A stack on a Swarm, by name."""

    kind = "swarm stack"

    def __init__(self, name: str, cluster: ClusterView, journal: Journal | None = None) -> None:
        super().__init__(name, client=cluster.manager(), journal=journal)
        self.cluster = cluster
        self._relays: dict[tuple[str, int, str], Relay] = {}
        self._relays_lock = threading.Lock()
        self._node_names: dict[str, str] = {}
        #: Replicas of services stopped (scaled to 0), to scale them back to.
        self._scaled: dict[str, int] = {}
        #: Every task id seen per service: their count only grows as tasks are replaced.
        self._seen_tasks: dict[str, set[str]] = {}

    @property
    def manager(self) -> docker.DockerClient:
        return self.cluster.manager()

    def engine_record(self) -> dict[str, str]:
        """A swarm's entries are undone through its cluster's own journal entry."""
        return {}

    def containers(self) -> list[Container]:
        """Every task container of the stack on every node, running or not."""
        found: list[Container] = []
        for node in self.cluster.nodes:
            if node.name in self.cluster.unavailable:
                continue
            with contextlib.suppress(Exception):  # a node cut off or lost: not listed
                found += self.cluster.client(node.name).containers.list(
                    all=True, filters={"label": f"{STACK_LABEL}={self.name}"}, ignore_removed=True
                )
        return found

    def service_names(self) -> list[str]:
        prefix = f"{self.name}_"
        return sorted(
            s.name[len(prefix) :]
            for s in self.manager.services.list(filters={"label": f"{STACK_LABEL}={self.name}"})
            if s.name.startswith(prefix)
        )

    def _swarm_service(self, name: str) -> Any:
        full = f"{self.name}_{name}"
        # The name filter matches prefixes: the exact one is picked.
        found = [s for s in self.manager.services.list(filters={"name": full}) if s.name == full]
        if not found:
            names = ", ".join(self.service_names()) or "none (is the stack deployed?)"
            raise UnknownService(
                f"swarm stack {self.name!r} has no service {name!r}; its services: {names}."
            )
        return found[0]

    def node_name(self, node_id: str) -> str:
        known = self._node_names.get(node_id)
        if known is None:
            for node in self.manager.nodes.list():
                self._node_names[str(node.id)] = str(node.attrs["Description"]["Hostname"])
            known = self._node_names.get(node_id, node_id)
        return known

    def tasks(self, name: str) -> list[Task]:
        """The service's running tasks, by slot (global services: by node)."""
        found = []
        for task in self._swarm_service(name).tasks(filters={"desired-state": "running"}):
            status = task.get("Status", {})
            container = (status.get("ContainerStatus") or {}).get("ContainerID")
            if status.get("State") != "running" or not container:
                continue
            found.append(
                Task(name, int(task.get("Slot") or 0), self.node_name(task["NodeID"]), container)
            )
        return sorted(found, key=lambda t: (t.slot, t.node))

    def service(self, name: str) -> SwarmService:
        """The service's lowest-slot running task; one task of it by slot
        (``trading-api.2``) or by node (``trading-api@node2``); else UnknownService."""
        if not isinstance(name, str) or not name:
            raise UnknownService(f"a service name is a non-empty string, not {name!r}.")
        known = self._services.get(name)
        if isinstance(known, SwarmService) and known.node not in self.cluster.unavailable:
            pin = self._pins.get(known.container_id)
            if pin is not None and pin.holds():
                return known
        service, slot, node = self._task_of(name)
        # A crashed node's tasks are gone, whatever the managers still say.
        everywhere = [
            t
            for t in self.tasks(service)
            if t.node not in self.cluster.crashed
            and (slot is None or t.slot == slot)
            and (node is None or t.node == node)
        ]
        # A task on a node cut off or frozen may still run (or seem to, to the
        # managers, until they mark the node down): one elsewhere is preferred.
        tasks = [t for t in everywhere if t.node not in self.cluster.unavailable] or everywhere
        if not tasks:
            which = "" if name == service else f" {name!r}"
            raise UnknownService(
                f"service {service!r} of swarm stack {self.name!r} has no running task{which} "
                f"now; its tasks: {', '.join(self.task_names(service)) or 'none'}."
            )
        task = tasks[0]
        made = SwarmService(
            self, service, task.container_id, "" if name == service else name, task.node
        )
        made.remember(dict(made.container().attrs))
        self._services[name] = made
        return made

    def _task_of(self, name: str) -> tuple[str, int | None, str | None]:
        """(service, slot, node) of a task's name: ``api``, ``api.2``, ``api@node2``."""
        known = self.service_names()
        if name in known:
            return name, None, None
        base, at, node = name.rpartition("@")
        if at and base in known:
            self.cluster.node(node)  # refuses a node the swarm does not have
            return base, None, node
        base, slot = split_task(name)
        if slot is not None and base in known:
            return base, slot, None
        self._swarm_service(name)  # raises UnknownService, naming the services there are
        return name, None, None

    def task_names(self, name: str) -> list[str]:
        """A name for each running task of service ``name``, what ``service()`` takes:
        ``api.1``, ``api.2``... (a global service's: ``api@node1``...)."""
        global_ = "Global" in self._swarm_service(name).attrs["Spec"].get("Mode", {})
        return [
            f"{name}@{t.node}" if global_ else f"{name}.{t.slot}"
            for t in self.tasks(name)
            if t.node not in self.cluster.crashed
        ]

    def running_containers(self, name: str) -> list[str]:
        """The ids of the service's containers that run now, on every node that
        answers (a task Swarm shut down may still be stopping)."""
        label = f"{TASK_SERVICE_LABEL}={self.name}_{name}"
        found: list[str] = []
        for node in self.cluster.nodes:
            if node.name in self.cluster.unavailable:
                continue
            with contextlib.suppress(Exception):  # a node cut off or lost: not counted
                listed = self.cluster.client(node.name).containers.list(filters={"label": label})
                found += [str(c.id) for c in listed]
        return found

    def converged(self, name: str) -> bool:
        """Whether the service runs as many healthy tasks as it should."""
        spec = self._swarm_service(name).attrs["Spec"]
        tasks = self.tasks(name)
        mode = spec.get("Mode", {})
        if "Replicated" in mode:
            want = int(mode["Replicated"].get("Replicas", 1))
        else:
            want = len(self.cluster.ready_nodes())
        if len(tasks) < want:
            return False
        for task in tasks:
            if task.node in self.cluster.unavailable:
                return False
            try:
                engine = self.cluster.client(task.node)
            except UnknownService:
                # An attached swarm's node whose engine was not given: the managers'
                # "running" stands (Swarm holds a task in "starting" until it is healthy).
                continue
            try:
                attrs = engine.containers.get(task.container_id).attrs
            except Exception:  # noqa: BLE001 - its node does not answer
                return False
            if not _is_healthy(attrs):
                return False
        return True

    def all_healthy(self) -> bool:
        try:
            names = self.service_names()
            return bool(names) and all(self.converged(n) for n in names)
        except Exception:  # noqa: BLE001 - asked while a manager is being elected
            return False

    def relay(self, name: str, port: int, protocol: str, hub: str) -> tuple[str, int]:
        key = (name, port, protocol)
        with self._relays_lock:
            relay = self._relays.get(key)
            if relay is None:
                relay = self._relays[key] = Relay(
                    lambda: self._published_address(name, port, protocol), hub
                )
        return "127.0.0.1", relay.port

    def _published_address(self, name: str, port: int, protocol: str) -> tuple[str, int]:
        service = self.service(name)
        bindings = service.pinned()["NetworkSettings"]["Ports"].get(f"{port}/{protocol}")
        if not bindings:
            raise UnknownService(f"service {name!r} does not publish {port}/{protocol}.")
        address = next(n.address for n in self.cluster.nodes if n.name == service.node)
        return address, int(bindings[0]["HostPort"])

    def close(self) -> None:
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()


@dataclass(frozen=True)
class SwarmService(Service):
    """A service of a swarm stack, as one of its running tasks (on ``node``)."""

    node: str = ""
    project_label = STACK_LABEL

    @property
    def swarm(self) -> SwarmProject:
        if not isinstance(self.project, SwarmProject):
            raise TypeError("a swarm service belongs to a swarm stack")
        return self.project

    def engine(self) -> docker.DockerClient:
        return self.swarm.cluster.client(self.node)

    def init_pid(self) -> int:
        """The task's first process, proved to be its process on this kernel; a task
        of an attached swarm on another machine is refused naming its node."""
        try:
            return super().init_pid()
        except TargetStopped:
            raise
        except UnsafeTarget:
            if self.swarm.cluster.hub is not None:  # a local swarm: its engines are ours
                raise
            raise ConfigurationError(
                f"task {self.label!r} runs on swarm node {self.node!r}, whose processes "
                "this machine's kernel does not show: faults act through the kernel, "
                "so run pytest (as root) on that node's machine to act on its tasks."
            ) from None

    def require_this_kernel(self) -> None:
        """Each task is proved on its own: the nodes' engines differ."""

    def unproved(self) -> ChaosError:
        reason = proof_error(self.container().attrs) or "it restarted while being checked"
        return UnsafeTarget(
            f"task {self.label!r}: its first process could not be proved to be the one "
            f"its node's engine reported ({reason})."
        )

    def restart_policy(self) -> str:
        """Swarm's restart condition (any, on-failure, none): Swarm, not the
        container's engine, replaces a task that ends."""
        spec = self.swarm._swarm_service(self.name).attrs["Spec"]["TaskTemplate"]
        return str((spec.get("RestartPolicy") or {}).get("Condition") or "any")

    def restart_count(self) -> int:
        """How many tasks of this service were replaced, as far as this session saw
        (every task id it was shown, less the service's running ones): Swarm keeps a
        few old tasks per slot only, so its own list cannot count past that."""
        tasks = self.swarm._swarm_service(self.name).tasks()
        seen = self.swarm._seen_tasks.setdefault(self.name, set())
        seen.update(str(t["ID"]) for t in tasks)
        running = sum(t.get("DesiredState") == "running" for t in tasks)
        return max(0, len(seen) - int(running))

    def state(self) -> dict[str, Any]:
        """The task container's State; a container Swarm removed is not running."""
        try:
            return super().state()
        except UnknownService:
            return {"Running": False, "Status": "removed"}

    def stop(self, grace: float) -> None:
        """Stop the service as a Swarm operator would: scale it to no task (stopping a
        task's container would only make Swarm start another one)."""
        from docker.types import ServiceMode

        if self.task:
            raise ConfigurationError(
                f"{self.task!r} is one task of service {self.name!r}: Swarm would start "
                f"another in its place. Stop the service ({self.name!r}), or kill the task."
            )
        service = self.swarm._swarm_service(self.name)
        mode = service.attrs["Spec"].get("Mode", {})
        if "Replicated" not in mode:
            raise ConfigurationError(
                f"service {self.name!r} is global: it cannot be scaled to no task; kill its "
                "tasks, or cut off or lose a node, instead."
            )
        self.swarm._scaled.setdefault(self.name, int(mode["Replicated"].get("Replicas", 1)))
        service.update(
            mode=ServiceMode("replicated", replicas=0),
            stop_grace_period=int(max(grace, 0.0) * 1e9),
        )
        began = time.monotonic()
        while self.swarm.running_containers(self.name):
            if time.monotonic() - began > grace + 30:
                raise RecoveryTimeout(f"service {self.name!r} still runs tasks after its stop.")
            time.sleep(0.05)  # poll interval while Swarm stops the tasks

    def start_if_stopped(self) -> bool:
        """Scale the service back to what it ran before :meth:`stop` (whether it did);
        a task that ended is Swarm's to replace, never started by hand."""
        replicas = self.swarm._scaled.pop(self.name, None)
        if replicas is not None:
            self.swarm._swarm_service(self.name).scale(replicas)
        return replicas is not None

    def published_port(self, port: int, protocol: str = "tcp") -> tuple[str, int]:
        """Where the host reaches ``port`` of the service: a relay on loopback to the
        node that runs its task now (it follows the task to another node)."""
        address = self.swarm._published_address(self.name, port, protocol)  # or refused
        hub = self.swarm.cluster.hub
        if hub is None:  # an attached swarm: its nodes' addresses are reachable
            return address
        return self.swarm.relay(self.name, port, protocol, hub)

    def is_healthy(self) -> bool:
        return self.swarm.converged(self.name)

    def _bring_back(
        self,
        *,
        timeout: float,
        restarts_before: int | None,
        start_after: float,
        probed_after: float | None,
    ) -> str:
        """Wait until the service runs as many healthy tasks as it should again. Swarm
        replaces a task that ended; if none came after ``start_after`` seconds (its
        restart condition is none), the service is updated with force, which starts
        its tasks afresh. Returns "pytest-chaos" (it forced the update), "swarm" (a new
        task replaced this one) or "still-running"."""
        began = time.monotonic()
        forced = False

        def check() -> bool:
            nonlocal forced
            if self.swarm.converged(self.name):
                return True
            if (
                not forced
                and time.monotonic() - began > start_after
                and not self.swarm.tasks(self.name)
            ):
                self.swarm._swarm_service(self.name).force_update()
                forced = True
            return False

        try:
            wait_for_recovery(
                check, timeout=timeout, interval=0.1, what=f"service {self.name!r}",
                on_timeline=False,
            )  # fmt: skip
        except RecoveryTimeout as exc:
            raise RecoveryTimeout(f"{exc} Its tasks now: {self.swarm.tasks(self.name)}") from None
        if forced:
            return "pytest-chaos"
        current = self.swarm.tasks(self.name)
        if all(t.container_id != self.container_id for t in current):
            return "swarm"
        return "still-running"
