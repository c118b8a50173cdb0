"""A compose service of several containers (``scale``): each is a task named by its
number (``worker.2``), a fault acts on one of them or on every one (``worker.*``), and
the plain name, ambiguous, is refused naming the choices."""

from __future__ import annotations

import os
import subprocess

import pytest

from pytest_chaos.chaos import Chaos
from pytest_chaos.errors import UnknownService
from pytest_chaos.targets import linux
from pytest_chaos.targets.compose import ComposeProject

pytestmark = [pytest.mark.integration, pytest.mark.root]

STACK = """\
version: "2.4"
services:
  worker:
    image: {image}
    command: ["sleep", "infinity"]
    restart: unless-stopped
    scale: 2
  single:
    image: {image}
    command: ["sleep", "infinity"]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    image = os.environ.get("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
    folder = tmp_path_factory.mktemp("replicas")
    (folder / "docker-compose.yml").write_text(STACK.format(image=image))
    name = f"chaos-replicas-{os.getpid()}"
    compose = ["docker-compose", "-p", name, "-f", str(folder / "docker-compose.yml")]
    subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=120)
    try:
        yield ComposeProject(name)
    finally:
        subprocess.run([*compose, "down", "-t", "0"], check=False, capture_output=True)


def _chaos(project: ComposeProject) -> Chaos:
    return Chaos(lambda: project, timeout=60.0, record=lambda *_: None)


def test_each_container_is_named_by_its_number(project):
    assert project.task_names("worker") == ["worker.1", "worker.2"]
    assert project.task_names("single") == ["single"]
    one, two = project.service("worker.1"), project.service("worker.2")
    assert one.container_id != two.container_id
    assert (one.name, one.label, two.label) == ("worker", "worker.1", "worker.2")
    with pytest.raises(UnknownService, match=r"2 containers: name one \(worker\.1, worker\.2\)"):
        project.service("worker")
    with pytest.raises(UnknownService, match=r"no container 3; its containers: worker\.1"):
        project.service("worker.3")


def test_a_fault_acts_on_one_container_or_on_every_one(project):
    chaos = _chaos(project)
    try:
        paused = chaos.pause("worker.2")
        assert paused.target == "worker.2"
        assert project.service("worker.2").state()["Paused"]
        assert not project.service("worker.1").state()["Paused"]
        chaos.undo(paused)
        pids = {n: project.service(n).init_pid() for n in ("worker.1", "worker.2")}
        starts = {n: linux.start_time(p) for n, p in pids.items()}
        killed = chaos.kill("worker.*")
        assert [k.target for k in killed] == ["worker.1", "worker.2"]
        assert all(k.effect().took for k in killed), [k.effect() for k in killed]
        assert not any(linux.is_alive(pids[n], starts[n]) for n in pids)
        chaos.undo(killed)
    finally:
        chaos.undo_all()
    # Docker's restart policy brought each back: new processes, the same containers.
    assert [k.restored_by for k in killed] == ["restart-policy", "restart-policy"]
    assert all(project.service(n).init_pid() != pids[n] for n in pids)
