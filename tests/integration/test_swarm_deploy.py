"""A stack file deployed on a local swarm: the images it names that this host has
reach every node before the deploy, so no task is ever rejected for want of one (a
user's stack waited out "No such image" rejections, retried every restart delay, for
about 35 s); the file's variables are read as a deploy reads them."""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest
from test_swarm_nodes import _tiny_image

from pytest_chaos.errors import StackStartError
from pytest_chaos.journal import Journal, new_run_id
from pytest_chaos.targets import swarm_deploy
from pytest_chaos.targets.engine import docker_client
from pytest_chaos.targets.swarm_nodes import LocalSwarm

pytestmark = [pytest.mark.root, pytest.mark.slow]

DIGEST = "sha256:" + "ab" * 32


def test_the_images_a_stack_file_names_are_read_with_its_variables(tmp_path):
    stack = tmp_path / "stack.yml"
    stack.write_text(
        textwrap.dedent(f"""\
            version: "3.8"
            services:
              a:
                image: ${{IMAGE_A:-example/a:1}}
              b:
                image: "example/b:2@{DIGEST}"
              c:
                image: example/c:3
        """)
    )
    env = {**os.environ, "IMAGE_A": "mine/a:2"}
    assert swarm_deploy._stack_images(stack, env) == {"mine/a:2", "example/b:2", "example/c:3"}
    stack.write_text("services: [not, a, mapping]\n")
    assert swarm_deploy._stack_images(stack, env) is None


def test_a_docker_cli_without_stack_config_leaves_the_images_to_after_the_deploy(tmp_path):
    # Debian bookworm's docker.io (20.10) has no `docker stack config`; deploy() then
    # copies what the deployed services name.
    old = Path("/usr/bin/docker")
    if not old.exists() or _has_stack_config(old):
        pytest.skip("needs a docker CLI without `docker stack config` at /usr/bin/docker")
    stack = tmp_path / "stack.yml"
    stack.write_text('version: "3.8"\nservices:\n  a:\n    image: example/a:1\n')
    assert swarm_deploy._stack_images(stack, {**os.environ, "PATH": "/usr/bin:/bin"}) is None


def _has_stack_config(cli: Path) -> bool:
    done = subprocess.run([cli, "stack", "--help"], capture_output=True, text=True, check=False)
    return any(line.split()[:1] == ["config"] for line in done.stdout.splitlines())


@pytest.fixture
def host_image():
    """A tiny image on this host's engine only, removed afterwards."""
    name = f"pytest-chaos-test/deploy-{uuid.uuid4().hex[:8]}"
    client = docker_client()
    client.api.import_image_from_data(_tiny_image(), repository=name, tag="1")
    try:
        yield f"{name}:1"
    finally:
        client.images.remove(f"{name}:1", force=True)
        client.close()


def test_a_stack_deploys_with_its_images_already_on_every_node(tmp_path, host_image):
    stack = tmp_path / "stack.yml"
    stack.write_text(
        textwrap.dedent("""\
            version: "3.8"
            services:
              sleeper:
                image: ${SLEEPER_IMAGE}
                command: ["/sleep", "3600"]
                deploy:
                  endpoint_mode: dnsrr
        """)
    )
    journal = Journal(tmp_path / "journal", new_run_id())
    cluster = LocalSwarm(journal.run_id, size=2, managers=1, journal=journal)
    loads: list[list[str]] = []
    load_images = cluster.load_images

    def counted(names: list[str]) -> None:
        loads.append(names)
        load_images(names)

    cluster.load_images = counted  # type: ignore[method-assign]
    try:
        cluster.up()
        project = swarm_deploy.deploy(
            cluster, stack, f"deploy{journal.run_id}", timeout=120.0, journal=journal,
            env={"SLEEPER_IMAGE": host_image},
        )  # fmt: skip
        # Copied once, before the deploy: the service's first task is its only one,
        # never rejected.
        assert loads == [[host_image]]
        tasks = project._swarm_service("sleeper").tasks()
        news = [(t["Status"]["State"], t["Status"].get("Err", "")) for t in tasks]
        assert news == [("running", "")], news
        for node in cluster.nodes:
            assert cluster.client(node.name).images.get(host_image)
    finally:
        cluster.down()


def test_a_stack_file_the_cli_cannot_read_is_a_clear_error_and_deploys_nothing(tmp_path):
    stack = tmp_path / "stack.yml"
    stack.write_text("services: [not, a, mapping]\n")
    journal = Journal(tmp_path / "journal", new_run_id())
    cluster = LocalSwarm(journal.run_id, size=1, managers=1, journal=journal)
    try:
        cluster.up()
        with pytest.raises(StackStartError, match=r"docker stack deploy of .*stack\.yml failed"):
            swarm_deploy.deploy(
                cluster, stack, f"bad{journal.run_id}", timeout=30.0, journal=journal
            )
        assert cluster.manager().services.list() == []
    finally:
        cluster.down()
