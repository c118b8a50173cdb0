"""Without root, each privileged step fails with one sentence naming the problem and
the fix. Each check runs in a child process as the unprivileged user nobody."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_chaos.targets.cgroup import cgroup_of

pytestmark = pytest.mark.root  # root is needed to become nobody

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(code: str) -> str:
    done = subprocess.run(
        [*NOBODY, sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CATCH = """
import sys
from pytest_chaos import ChaosError
try:
    {call}
except ChaosError as exc:
    print(type(exc).__name__ + ": " + str(exc))
"""


def test_the_docker_socket_refused_says_run_as_root():
    said = as_nobody(
        CATCH.format(call="from pytest_chaos.targets.engine import docker_client; docker_client()")
    )
    assert said == (
        "DockerUnavailable: permission denied on the Docker socket: run pytest as root (sudo), "
        "or as a member of the docker group."
    )


def test_a_containers_namespace_refused_says_run_as_root(chaos_project):
    pid = chaos_project.service("redis").init_pid()
    call = (
        "from pytest_chaos.targets.netns import open_netns\n"
        f"    with open_netns({pid}, 'redis'): pass"
    )
    said = as_nobody(CATCH.format(call=call))
    assert (
        said
        == "PermissionProblem: cannot open redis's network namespace: run pytest as root (sudo)."
    )


def test_a_cgroup_limit_refused_says_run_as_root(chaos_project):
    redis = chaos_project.service("redis")
    path = cgroup_of(redis.main_pid()).path("cpu", "cpu.cfs_quota_us")
    if not path.exists():
        path = cgroup_of(redis.main_pid()).path("cpu", "cpu.max")
    before = path.read_text()
    call = (
        "from pathlib import Path\n"
        "    from pytest_chaos.faults.resources import _write\n"
        f"    _write(Path({str(path)!r}), '50000')"
    )
    said = as_nobody(CATCH.format(call=call))
    assert said == f"EnvironmentProblem: cannot write {path}: run pytest as root (sudo)."
    assert path.read_text() == before
