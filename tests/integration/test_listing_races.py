"""Another run's containers come and go while this one lists projects and services:
a container removed between Docker's list and its inspect is not an error (it was
an INTERNALERROR of ``--chaos-project`` once, docker-py's NotFound)."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

from pytest_chaos.targets.compose import ComposeProject, project_names
from pytest_chaos.targets.engine import docker_client

BASE_IMAGE = os.environ.get("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")


@pytest.fixture
def vanishing():
    """A compose-labelled project of 30 created containers, removed one by one by a
    thread once the test says go."""
    client = docker_client()
    name = f"vanishing-{os.getpid()}"
    labels = {"com.docker.compose.project": name}
    made = [
        client.containers.create(
            BASE_IMAGE, ["true"], labels={**labels, "com.docker.compose.service": f"s{i}"}
        )
        for i in range(30)
    ]
    go = threading.Event()

    def remove_all() -> None:
        go.wait(10)
        for container in made:
            container.remove(force=True)

    remover = threading.Thread(target=remove_all)
    remover.start()
    yield name, go, remover
    go.set()
    remover.join(60)
    for container in made:  # had the thread failed
        with contextlib.suppress(Exception):
            container.remove(force=True)
    client.close()


def test_listing_while_another_run_removes_its_containers(vanishing):
    name, go, remover = vanishing
    project = ComposeProject(name)
    go.set()
    seen = []
    while remover.is_alive():
        seen.append(len(project.containers()))
        project_names(project.client)
        project.service_names()
    assert seen, "the listing never ran while containers were being removed"
    assert seen[0] >= seen[-1]
    assert project.containers() == []
