"""Every kind of fault, all in force at once in an inner pytest, undone whichever
way that test ends: pass, failure, exception, Ctrl-C and SIGTERM. (kill -9 has
tests per fault family, next to each family's tests.) The check compares the whole
observable state of the stack before and after."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pytest_chaos import wait_for_recovery
from pytest_chaos.faults.network import TABLE_PREFIX, qdisc_session, root_qdisc
from pytest_chaos.faults.postgres import psql
from pytest_chaos.targets.cgroup import cgroup_of
from pytest_chaos.targets.netns import open_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALL_FAULTS = """
    chaos.max_connections("postgres", 30)
    chaos.kill("nginx", "SIGSTOP")
    chaos.pause("redis")
    chaos.partition("trading-api", ["redis"], mode="reject")
    chaos.loss("trading-api", 20, ["postgres"])
    chaos.latency("postgres", "30ms", peers=["trading-api"])
    chaos.bandwidth("postgres", "10mbit")
    chaos.memory_cap("trading-api", "400m")
    chaos.cpu_quota("trading-api", 0.7)
    chaos.io_throttle("postgres", write_bps="50m")
    chaos.io_contention("postgres", workers=1, bytes_per_worker="16m")
    chaos.stop("redis", grace=1)
"""

CGROUP_FILES = {
    "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max"),
    "blkio": ("blkio.throttle.write_bps_device",),
    "io": ("io.max",),
}


def state(project) -> dict:
    """Everything a fault could leave behind, per service."""
    seen = {}
    for name in ("postgres", "redis", "trading-api", "nginx"):
        service = project.service(name)
        docker_state = service.state()
        entry = {
            "running": docker_state["Running"],
            "paused": docker_state["Paused"],
            "healthy": service.is_healthy(),
        }
        pid = service.init_pid()
        with open_netns(pid, name) as ns:
            entry["nft"] = sorted(
                t for t in ns.run(["nft", "list", "tables"]).split() if t.startswith(TABLE_PREFIX)
            )
            entry["iptables"] = [
                r
                for r in ns.run(["iptables", "-t", "mangle", "-S"]).splitlines()
                if "PYTEST_CHAOS" in r
            ]
        with qdisc_session(pid, name, "eth0") as (ipr, index):
            entry["qdisc"] = root_qdisc(ipr, index)
        cg = cgroup_of(service.main_pid())
        entry["cgroup"] = {
            f: cg.read(c, f) for c, files in CGROUP_FILES.items() for f in files if cg.has(c, f)
        }
        seen[name] = entry
    seen["max_connections"] = psql(project.service("postgres"), "SHOW max_connections")
    return seen


ENDINGS = {
    "pass": ("", {"passed": 1}),
    "failure": ("assert False, 'the experiment failed'", {"failed": 1}),
    "exception": ("raise ConnectionError('the experiment crashed')", {"failed": 1}),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_fault_is_undone_however_the_test_ends(pytester, chaos_project, tmp_path, ending):
    body, outcome = ENDINGS[ending]
    before = state(chaos_project)
    pytester.makepyfile("def test_x(chaos):\n" + ALL_FAULTS + (f"    {body}\n" if body else ""))
    result = pytester.runpytest_subprocess(
        f"--chaos-project={chaos_project.name}", f"--chaos-journal={tmp_path}"
    )
    result.assert_outcomes(**outcome)
    assert state(chaos_project) == before
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_every_fault_is_undone_when_pytest_is_interrupted(pytester, chaos_project, tmp_path, sig):
    before = state(chaos_project)
    marker = tmp_path / "in-force"
    pytester.makepyfile(
        "import pathlib, time\n"
        "def test_x(chaos):\n"
        + ALL_FAULTS
        + f"    pathlib.Path({str(marker)!r}).write_text('yes')\n"
        + "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--chaos-project={chaos_project.name}",
            f"--chaos-journal={tmp_path / 'journal'}",
        ],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def applied() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the inner pytest ended before applying its faults:\n{proc.stdout.read()}")
        return marker.exists()

    wait_for_recovery(applied, timeout=120, interval=0.05, transient=(), what="the faults")
    assert chaos_project.service("redis").state()["Running"] is False  # the faults are in force
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert state(chaos_project) == before, out
    assert list((tmp_path / "journal").glob("*.json")) == []
