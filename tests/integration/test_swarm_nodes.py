"""A local Swarm of three engines, each in a network namespace of its own: it forms,
its tasks are processes this kernel shows in the node's cgroups, and its teardown
leaves nothing behind, whether by ``down()`` or, after ``kill -9`` of the pytest that
made it, by the next session's journal replay."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from swarm_owner import kill_9_once_in_force

from pytest_chaos.journal import Journal, new_run_id
from pytest_chaos.targets import linux, swarm_teardown
from pytest_chaos.targets.cgroup import cgroup_roots
from pytest_chaos.targets.swarm_nodes import LocalSwarm

pytestmark = [pytest.mark.root, pytest.mark.slow]

TINY = "pytest-chaos-test/tiny:1"


def _traces(run_id: str) -> list[str]:
    """Whatever of a local swarm of run ``run_id`` this machine still shows."""
    found = [f"netns {n}" for n in swarm_teardown.netns_names() if run_id in n]
    for path in (swarm_teardown.STATE_DIR / run_id, swarm_teardown.RUN_DIR / run_id):
        if path.exists():
            found.append(f"folder {path}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if run_id in line:
            found.append(f"mount {line}")
    for root in cgroup_roots():
        found += [f"cgroup {p}" for p in root.glob(f"pytest-chaos-swarm-{run_id}-*")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"pytest-chaos-swarm-{run_id}" in (proc / "cgroup").read_text():
                    found.append(f"process {proc.name} {linux.comm(int(proc.name))}")
            except OSError:
                continue
    return found


def _no_traces(run_id: str, timeout: float = 15.0) -> list[str]:
    """What is left of the swarm once its processes' zombies had ``timeout`` seconds to
    be reaped (their parents are dead: the machine's init reaps them)."""
    deadline = time.monotonic() + timeout
    while (left := _traces(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval while init reaps
    return left


def _host_links() -> set[str]:
    done = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()}


def _tiny_image() -> bytes:
    """A root filesystem of /bin/sleep and the libraries it links, as a tar for
    ``docker import``: a task image without a registry, in milliseconds."""
    sleep = Path("/bin/sleep").resolve()
    ldd = subprocess.run(["ldd", str(sleep)], capture_output=True, text=True, check=True).stdout
    files = [sleep] + [
        Path(word) for line in ldd.splitlines() for word in line.split() if word.startswith("/")
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            tar.add(path.resolve(), arcname=str(path).lstrip("/"))
        tar.add(sleep, arcname="sleep")
    return buffer.getvalue()


def deploy_sleepers(cluster: LocalSwarm, stack: str, **options):
    """A stack ``stack`` of one service, ``sleeper``: three replicas of the tiny image
    on ``cluster`` (extra service ``options`` go to the SDK), once they all run."""
    from docker.types import EndpointSpec, RestartPolicy, ServiceMode

    from pytest_chaos import wait_for_recovery
    from pytest_chaos.targets.swarm import STACK_LABEL, SwarmProject

    for node in cluster.nodes:
        cluster.client(node.name).api.import_image_from_data(
            _tiny_image(), repository=TINY.split(":")[0], tag="1"
        )
    cluster.manager().services.create(
        TINY, ["/sleep", "3600"], name=f"{stack}_sleeper",
        mode=ServiceMode("replicated", replicas=3),
        endpoint_spec=EndpointSpec(mode="dnsrr"),
        restart_policy=RestartPolicy(condition="any", delay=0),
        labels={STACK_LABEL: stack}, container_labels={STACK_LABEL: stack}, **options,
    )  # fmt: skip
    project = SwarmProject(stack, cluster, cluster.journal)
    wait_for_recovery(
        lambda: project.converged("sleeper"), timeout=60, interval=0.2,
        what="three sleeper tasks running",
    )  # fmt: skip
    return project


def test_three_engines_form_a_swarm_whose_tasks_are_ours_and_leave_nothing_behind(
    tmp_path, record_property
):
    links = _host_links()
    journal = Journal(tmp_path / "journal", new_run_id())
    cluster = LocalSwarm(journal.run_id, size=3, journal=journal)
    try:
        cluster.up()
        assert [e.kind for e in journal.entries()] == ["swarm-cluster"]
        assert cluster.ready_nodes() == {"node1", "node2", "node3"}
        # Nothing was added to the host's own network namespace.
        assert _host_links() == links
        for node in cluster.nodes:
            client = cluster.client(node.name)
            assert client.info()["Name"] == node.name
            client.api.import_image_from_data(_tiny_image(), repository=TINY.split(":")[0], tag="1")
        from docker.types import EndpointSpec, ServiceMode

        manager = cluster.manager()
        service = manager.services.create(
            TINY, ["/sleep", "3600"], name="sleeper", mode=ServiceMode("global"),
            endpoint_spec=EndpointSpec(mode="dnsrr"),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while sum(t["Status"]["State"] == "running" for t in service.tasks()) < 3:
            assert time.monotonic() < deadline, service.tasks()
            time.sleep(0.2)  # poll interval while the tasks start
        # Each node's task is a process of this kernel, in that node's cgroups and
        # namespace, not in the host's.
        for node in cluster.nodes:
            (container,) = cluster.client(node.name).containers.list()
            pid = int(container.attrs["State"]["Pid"])
            assert f"/{node.cgroup_parent}/{container.id}" in linux.read_cgroup(pid)
            assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        for part, seconds in cluster.timings.items():
            record_property(f"swarm_up_{part}_s", seconds)
    finally:
        said = cluster.down()
    assert "stopped" in said, said
    assert "removed namespaces" in said, said
    assert _no_traces(journal.run_id) == []
    assert _host_links() == links
    assert journal.entries() == []


OWNER = """
import sys, time
from pathlib import Path
from pytest_chaos.journal import Journal
from pytest_chaos.targets.swarm_nodes import LocalSwarm
journal = Journal(Path(sys.argv[1]), sys.argv[2])
cluster = LocalSwarm(sys.argv[2], size=2, managers=1, journal=journal)
cluster.up()
print("up", flush=True)
time.sleep(600)
"""


def test_a_swarm_left_by_a_killed_pytest_is_torn_down_by_the_journal(tmp_path):
    run_id = new_run_id()

    def some_trace_left() -> None:
        assert _traces(run_id), "the swarm left no trace to find"

    kill_9_once_in_force(OWNER, tmp_path, run_id, "up", before=some_trace_left)
    # Its engines outlive it (they are in their own session and cgroup).
    assert any(t.startswith("process") for t in _traces(run_id))
    replayed = Journal(tmp_path, new_run_id()).replay()
    assert [(r.entry.kind, r.error) for r in replayed] == [("swarm-cluster", None)]
    assert "removed namespaces" in replayed[0].outcome
    assert _no_traces(run_id) == []
