"""``--chaos-cleanup`` touches only what it can prove belongs to a dead run of its own
journal: never a live run's fault (whatever journal it uses), never a container it
has no business with. And a fault removed while in force is an error of the test
that owned it, not a pass."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from pytest_chaos import wait_for_recovery
from pytest_chaos.targets.netns import open_netns

INNER = """
import pathlib, time
import pytest
from pytest_chaos import wait_for_recovery

@pytest.mark.effect_optional  # no traffic: a test of ownership, not of the system
def test_partitioned(chaos):
    handle = chaos.partition("trading-api", ["postgres"])
    pathlib.Path({marker!r}).write_text(handle.table)
    go = pathlib.Path({go!r})
    wait_for_recovery(go.exists, timeout=120, interval=0.05, what="the outer test's go")
"""


def tables(service) -> str:
    with open_netns(service.init_pid(), service.name) as ns:
        return ns.run(["nft", "list", "tables"])


@pytest.fixture
def live_partition(pytester, chaos_project, tmp_path):
    """An inner pytest with a partition in force, waiting for ``go`` to end its test.
    Yields (table name, go file, process)."""
    marker, go = tmp_path / "in-force", tmp_path / "go"
    pytester.makepyfile(INNER.format(marker=str(marker), go=str(go)))
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            f"--chaos-project={chaos_project.name}", f"--chaos-journal={tmp_path / 'journal'}",
        ],
        cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def applied() -> bool:
            assert proc.poll() is None, "the inner pytest ended before applying its fault"
            return marker.exists() and bool(marker.read_text())

        wait_for_recovery(applied, timeout=90, interval=0.05, transient=(), what="the fault")
        yield marker.read_text(), go, proc
    finally:
        go.touch()
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()


def test_cleanup_with_another_journal_leaves_a_live_runs_partition_alone(
    pytester, chaos_project, live_partition, tmp_path
):
    table, go, proc = live_partition
    api = chaos_project.service("trading-api")
    result = pytester.runpytest_subprocess(
        "--chaos-cleanup", f"--chaos-journal={tmp_path / 'another-journal'}"
    )
    assert result.ret == 0
    assert table not in result.stdout.str()
    assert table in tables(api), "a cleanup from another journal removed a live run's fault"
    # Even the live run's own journal does not sweep it: its pytest is alive.
    result = pytester.runpytest_subprocess("--chaos-cleanup", f"--chaos-journal={tmp_path}/journal")
    assert result.ret == 0
    assert table in tables(api)
    go.touch()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert table not in tables(api)


def test_a_fault_removed_while_in_force_is_an_error_of_its_test(chaos_project, live_partition):
    table, go, proc = live_partition
    api = chaos_project.service("trading-api")
    with open_netns(api.init_pid(), api.name) as ns:
        ns.run(["nft", "delete", "table", "inet", table])
    go.touch()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "1 passed, 1 error" in out
    assert "FaultVanished" in out
    assert f"nft table {table} had been removed" in out


def test_cleanup_skips_a_container_on_the_hosts_network_and_exits_0(
    pytester, chaos_project, tmp_path
):
    """A dead run of this journal touched a project one of whose containers uses
    network_mode: host. Its namespace is the host's: never entered, never fatal."""
    project = f"chaos-hostnet-{uuid.uuid4().hex[:8]}"
    image = chaos_project.service("redis").container().image.id
    container = chaos_project.client.containers.run(
        image,
        ["sleep", "600"],
        detach=True,
        network_mode="host",
        labels={"com.docker.compose.project": project, "com.docker.compose.service": "hostnet"},
    )
    runs = tmp_path / "journal" / "runs"
    runs.mkdir(parents=True)
    (runs / "dead0001.json").write_text(
        json.dumps(
            {"run_id": "dead0001", "owner_pid": 1, "owner_start": "1", "projects": [project]}
        )
    )
    try:
        result = pytester.runpytest_subprocess(
            "--chaos-cleanup", f"--chaos-journal={tmp_path / 'journal'}"
        )
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines(
            [f"pytest-chaos: skipped {project}/hostnet: refusing to change*network namespace*"]
        )
        assert "Traceback" not in result.stdout.str() + result.stderr.str()
        assert not runs.joinpath("dead0001.json").exists(), "the dead run should be forgotten"
    finally:
        container.remove(force=True)


def test_a_misspelt_project_is_a_usage_error_naming_the_projects_there_are(pytester, chaos_project):
    pytester.makepyfile("def test_x(chaos):\n    chaos.kill('postgres')\n")
    result = pytester.runpytest_subprocess("--chaos-project=chaos-exchnage")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = "*--chaos-project: Docker has no compose project named 'chaos-exchnage'*"
    result.stderr.fnmatch_lines([f"{said}{chaos_project.name}*"])
    assert "test_x" not in result.stdout.str()
