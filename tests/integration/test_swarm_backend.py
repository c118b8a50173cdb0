"""The experiments, unchanged, against the exchange deployed on a local three-node
Swarm (--chaos-backend swarm), in a pytest of its own: those that pass there pass, the
compose-only ones are deselected, and the cluster leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_chaos.targets import swarm_teardown
from pytest_chaos.targets.cgroup import cgroup_roots

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_the_swarm_experiments_pass_on_a_local_swarm_and_leave_nothing_behind(tmp_path):
    before = swarm_teardown.netns_names()
    interfaces = sorted(os.listdir("/sys/class/net"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/experiments", "--chaos-backend=swarm",
         "-p", "no:cacheprovider", "-q", "--no-header",
         f"--junitxml={tmp_path / 'swarm.xml'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.OK, output[-4000:]
    # 01 (two tests), 02, 07, 10, 11 and 12.
    assert "7 passed" in output, output[-2000:]
    assert "deselected" in output, output[-2000:]
    # Nothing of the cluster is left: namespaces, interfaces (none was ever added to
    # the host's namespace), engines' folders, cgroups...
    assert swarm_teardown.netns_names() == before
    assert sorted(os.listdir("/sys/class/net")) == interfaces
    assert _empty(swarm_teardown.RUN_DIR)
    assert _empty(swarm_teardown.STATE_DIR)
    left = [p for root in cgroup_roots() for p in root.glob("pytest-chaos-swarm-*")]
    assert left == []
    # ...mounts (each engine's own live in its mount namespace, gone with it)...
    mounts = Path("/proc/self/mounts").read_text()
    assert str(swarm_teardown.RUN_DIR) not in mounts
    assert str(swarm_teardown.STATE_DIR) not in mounts
    # ...engines: no process runs with a folder of a local swarm on its command line.
    engines = [p for p in Path("/proc").glob("[0-9]*") if _runs_a_swarm_engine(p)]
    assert engines == []


def _runs_a_swarm_engine(proc: Path) -> bool:
    try:
        return str(swarm_teardown.RUN_DIR).encode() in (proc / "cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return False


def _empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupted_swarm_run_lifts_its_node_fault_and_tears_the_swarm_down(sig):
    before = swarm_teardown.netns_names()
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests/experiments", "--chaos-backend=swarm",
         "-k", "node_partition", "-p", "no:cacheprovider", "--chaos-live-interval=0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as inner:  # fmt: skip
        assert inner.stdout is not None
        seen = []
        for line in inner.stdout:
            seen.append(line)
            if "chaos: partition node" in line:
                break
        else:
            pytest.fail("the node was never cut off:\n" + "".join(seen[-40:]))
        inner.send_signal(sig)
        rest = inner.stdout.read()
        code = inner.wait(timeout=300)
    assert code == pytest.ExitCode.INTERRUPTED, rest[-3000:]
    assert swarm_teardown.netns_names() == before
    assert _empty(swarm_teardown.RUN_DIR)
    assert _empty(swarm_teardown.STATE_DIR)
