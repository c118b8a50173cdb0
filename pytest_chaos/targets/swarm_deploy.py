"""A stack on a local swarm: the cluster brought up for a session, the images it needs
copied into its engines, the stack file deployed, and everything torn down after
(``--chaos-backend swarm``)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StackStartError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .swarm import STACK_LABEL, SwarmProject

if TYPE_CHECKING:
    import docker
    import pytest

    from ..journal import Journal
    from ..settings import ChaosSettings
    from .swarm_nodes import LocalSwarm


def deploy(
    cluster: LocalSwarm,
    stack_file: Path,
    name: str,
    *,
    timeout: float,
    journal: Journal | None = None,
    env: dict[str, str] | None = None,
) -> SwarmProject:
    """Deploy ``stack_file`` as stack ``name`` and wait until every service converged.

    The images the stack names that this host's engine has (built here, or pulled)
    are copied to every node first; the nodes pull any other themselves. Deployed
    before its images, a stack's tasks are rejected ("No such image") and retried
    after the restart delay (5 s unless the stack says otherwise) until they arrive."""
    env = {**os.environ, **(env or {}), "DOCKER_HOST": cluster.nodes[0].url}
    named = _stack_images(stack_file, env)
    loaded = _copy_local_images(cluster, named or set())
    done = subprocess.run(
        ["docker", "stack", "deploy", "--compose-file", str(stack_file),
         "--resolve-image", "never", name],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackStartError(
            f"docker stack deploy of {stack_file} failed: {done.stderr.strip()[-2000:]}"
        )
    project = SwarmProject(name, cluster, journal)
    began = time.monotonic()
    # What the deployed services name, in case the stack file could not be read
    # beforehand (a docker CLI without `stack config`).
    wanted = {
        str(s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]).split("@")[0]
        for s in project.manager.services.list(filters={"label": f"{STACK_LABEL}={name}"})
    }
    _copy_local_images(cluster, wanted - loaded)
    deadline = time.monotonic() + timeout
    while not project.all_healthy():
        if time.monotonic() > deadline:
            states = {
                n: [f"{t.node}:{t.container_id[:12]}" for t in project.tasks(n)]
                for n in project.service_names()
            }
            raise StackStartError(
                f"swarm stack {name!r} was not healthy within {timeout:g} s (running tasks: "
                f"{states}). What Swarm says of its latest tasks: {_task_news(project)}. "
                "A health check that needs its peers deadlocks a Swarm start where it does "
                "not deadlock compose: a task joins the service's DNS name only once healthy."
            )
        time.sleep(0.25)  # poll interval while the stack converges
    cluster.timings["stack"] = round(time.monotonic() - began, 3)
    return project


def _stack_images(stack_file: Path, env: dict[str, str]) -> set[str] | None:
    """The images ``stack_file`` names, its variables interpolated as a deploy would
    (``docker stack config`` reads the file alone: no engine needed); None if the
    CLI cannot say."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(
            ["docker", "stack", "config", "--compose-file", str(stack_file)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return {
                m.group(1).strip("'\"").split("@")[0]
                for m in re.finditer(r"^\s+image:\s*(\S+)\s*$", done.stdout, re.MULTILINE)
            }
    return None


def _copy_local_images(cluster: LocalSwarm, names: set[str]) -> set[str]:
    """Copy those of ``names`` this host's engine has to every node; which they were."""
    if not names:
        return set()
    from .engine import docker_client

    host = docker_client()
    try:
        local = sorted(i for i in names if _has_image(host, i))
    finally:
        host.close()
    if local:
        cluster.load_images(local)
    return set(local)


def _task_news(project: SwarmProject) -> str:
    """For each service, the state Swarm gives its newest task and why ("rejected: No
    such image", "starting: unhealthy container"...), from the managers."""
    said = []
    for name in project.service_names():
        with contextlib.suppress(Exception):  # a manager that does not answer now
            tasks = project._swarm_service(name).tasks()
            if not tasks:
                said.append(f"{name}: no task yet")
                continue
            newest = max(tasks, key=lambda t: str(t.get("UpdatedAt") or ""))
            status = newest.get("Status") or {}
            why = status.get("Err") or status.get("Message") or ""
            said.append(f"{name}: {status.get('State', '?')}" + (f" ({why})" if why else ""))
    return "; ".join(said) or "nothing (no manager answered)"


def _has_image(client: docker.DockerClient, name: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(name)
    except ImageNotFound:
        return False
    return True


def start_local(
    request: pytest.FixtureRequest, settings: ChaosSettings, journal: Journal
) -> SwarmProject:
    """The ``chaos_project`` of ``--chaos-backend swarm``: a local swarm of
    ``settings.swarm_nodes`` engines (three managers when there are three or more, so a
    node may be cut off or lost without losing the quorum), the stack file deployed
    on it; both torn down when the session ends."""
    from .swarm_nodes import LocalSwarm

    stack = settings.swarm_stack_file
    if stack is None:
        raise StackStartError(
            "--chaos-backend swarm deploys a stack file: name it with the ini option "
            "chaos_swarm_stack_file or --chaos-swarm-stack-file."
        )
    if not stack.is_file():
        raise StackStartError(f"the swarm stack file {stack} does not exist.")
    size = settings.swarm_nodes
    cluster = LocalSwarm(journal.run_id, size=size, managers=3 if size >= 3 else 1, journal=journal)
    made: list[SwarmProject] = []

    def down() -> None:
        for project in made:
            project.close()
        cluster.down()

    request.addfinalizer(down)
    began = time.monotonic()
    cluster.up(timeout=settings.timeout)
    made.append(
        deploy(cluster, stack, f"chaos{journal.run_id}", timeout=settings.timeout, journal=journal)
    )
    cluster.timings["total"] = round(time.monotonic() - began, 3)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items())
        reporter.write_line(f"pytest-chaos: a local swarm of {size} nodes, stack deployed: {parts}")
    return made[0]
