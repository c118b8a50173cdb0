"""A swarm that runs already, somewhere, reached through the Docker API of one of its
managers (``--chaos-swarm-manager``): pytest-chaos deploys nothing there and removes
nothing; it runs the experiments against a stack deployed there
(``--chaos-swarm-stack``).

The managers say where each task runs. A fault acts through the kernel of the machine
that runs the task (its pid, namespaces, cgroups): it finds the task through that
node's own engine (``--chaos-swarm-engine NODE=URL``), and refuses, naming the node,
a task whose processes this machine's kernel does not show. Run pytest as root on a
node of the swarm to act on that node's tasks; the faults that go through Swarm itself
(``chaos.stop``, a service scaled to no task) act wherever the tasks run. Node faults
(partition, freeze, crash) need the node's namespaces and cgroups: they are for a
local swarm."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, StackStartError, UnknownService
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .swarm_nodes import ClusterView

if TYPE_CHECKING:
    import docker
    import pytest

    from ..journal import Journal
    from ..settings import ChaosSettings
    from .swarm import SwarmProject


@dataclass(frozen=True)
class RemoteNode:
    """A node of an attached swarm: its host name, its address in the swarm, and its
    engine's Docker API if one was given."""

    name: str
    address: str
    url: str | None


def _client(url: str) -> docker.DockerClient:
    """A client of the Docker API at ``url``, with the docker CLI's TLS variables."""
    import docker

    environment = {**os.environ, "DOCKER_HOST": url}
    try:
        return docker.from_env(environment=environment, timeout=30)
    except Exception as exc:  # noqa: BLE001 - the SDK's errors are many; one sentence
        raise StackStartError(f"no Docker API answers at {url}: {exc}") from None


class AttachedSwarm(ClusterView):
    """A running swarm, through a manager's Docker API and its nodes' engines."""

    #: No hub namespace: published ports are reached at the nodes' own addresses.
    hub: str | None = None

    def __init__(self, manager_url: str, engines: dict[str, str]) -> None:
        self.manager_url = manager_url
        self._manager = _client(manager_url)
        info = self._manager.info()
        if not (info.get("Swarm") or {}).get("ControlAvailable"):
            self._manager.close()
            raise StackStartError(
                f"the engine at {manager_url} is not a manager of a swarm (docker info: "
                f"swarm state {(info.get('Swarm') or {}).get('LocalNodeState')!r}); give "
                "the Docker API of a manager."
            )
        self.nodes = [
            RemoteNode(
                str(n.attrs["Description"]["Hostname"]),
                str((n.attrs.get("Status") or {}).get("Addr") or ""),
                engines.get(str(n.attrs["Description"]["Hostname"])),
            )
            for n in self._manager.nodes.list()
        ]
        unknown = sorted(set(engines) - {n.name for n in self.nodes})
        if unknown:
            self._manager.close()
            raise ConfigurationError(
                f"--chaos-swarm-engine names {', '.join(unknown)}, which the swarm at "
                f"{manager_url} does not have; its nodes: "
                f"{', '.join(n.name for n in self.nodes)}."
            )
        self._clients: dict[str, docker.DockerClient] = {}
        #: What faults of a local swarm keep here; nothing marks a node so here.
        self.unavailable: set[str] = set()
        self.crashed: set[str] = set()

    def manager(self) -> docker.DockerClient:
        return self._manager

    def client(self, node: str) -> docker.DockerClient:
        """The Docker client of ``node``'s own engine (UnknownService when none was
        given: a task there cannot be found by its processes)."""
        known = self._clients.get(node)
        if known is not None:
            return known
        url = self.node(node).url
        if url is None:
            raise UnknownService(
                f"no engine API was given for swarm node {node!r}, so its tasks cannot be "
                f"reached: add --chaos-swarm-engine {node}=URL (and run pytest on that "
                "node's machine for the faults that act through the kernel)."
            )
        made = self._clients[node] = _client(url)
        return made

    def close(self) -> None:
        for client in [*self._clients.values(), self._manager]:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()


def attach(
    request: pytest.FixtureRequest, settings: ChaosSettings, journal: Journal
) -> SwarmProject:
    """The ``chaos_project`` of ``--chaos-backend swarm --chaos-swarm-manager URL``: the
    stack ``--chaos-swarm-stack`` of that swarm, once every service of it runs as many
    healthy tasks as it should."""
    import time

    from .swarm import SwarmProject

    if settings.swarm_manager is None or settings.swarm_stack is None:
        raise ConfigurationError("attaching a swarm needs its manager's URL and a stack.")
    cluster = AttachedSwarm(settings.swarm_manager, settings.swarm_engines)
    request.addfinalizer(cluster.close)
    project = SwarmProject(settings.swarm_stack, cluster, journal)
    request.addfinalizer(project.close)
    if not project.service_names():
        raise StackStartError(
            f"the swarm at {settings.swarm_manager} has no stack {settings.swarm_stack!r} "
            "(no service labelled com.docker.stack.namespace with that name): deploy it "
            "first, pytest-chaos only attaches to it."
        )
    deadline = time.monotonic() + settings.timeout
    while not project.all_healthy():
        if time.monotonic() > deadline:
            raise StackStartError(
                f"stack {settings.swarm_stack!r} was not healthy within "
                f"{settings.timeout:g} s (every service's tasks running and healthy)."
            )
        time.sleep(0.25)  # poll interval while the stack converges
    return project
