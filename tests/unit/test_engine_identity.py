"""The proof that a pid an engine reported is, on this kernel, its container's first
process: against a /proc laid out by hand, where the right answer is known, and
against real processes of ours (which are never a container's)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import RemoteEngine, UnsafeTarget
from pytest_chaos.targets import linux
from pytest_chaos.targets.engine import Engine

CONTAINER = "c8409bc530b8319a4b7273b09086914501b6cd0480bf15ef172e149efd4f1c95"
SENTINEL = "5e471ae1b0a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c"
BOOT = 1_700_000_000  # the fake kernel's boot time (btime)
HZ = os.sysconf("SC_CLK_TCK")
OURS = len(linux.nspid(os.getpid()))  # how deep this test runs among pid namespaces


def _proc(root: Path, pid: int, *, cgroup: str, nspid: list[int], started: float) -> Path:
    """A /proc with one process: its cgroup file, its NSpid line and its start time
    (``started`` seconds after boot)."""
    (root / "stat").write_text(f"cpu 1 2 3\nbtime {BOOT}\n")
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text(f"Name:\tx\nNSpid:\t{' '.join(map(str, nspid))}\n")
    ticks = round(started * HZ)
    fields = ["S", "1"] + ["0"] * 17 + [str(ticks), "0"]
    (d / "stat").write_text(f"{pid} (x) {' '.join(fields)}\n")
    return root


def _v1(container: str) -> str:
    return f"12:memory:/docker/{container}\n11:cpu,cpuacct:/docker/{container}\n"


def test_a_containers_first_process_is_proved(tmp_path):
    proc = _proc(
        tmp_path, 3999942, cgroup=_v1(CONTAINER), nspid=[3999942] * OURS + [1], started=100.0
    )
    proved = linux.prove_first_process(
        3999942, CONTAINER, started_at=BOOT + 100.3, proc=proc, pid_namespace="own"
    )
    assert proved == 3999942


def test_another_containers_process_with_the_same_number_is_refused(tmp_path):
    # The case of a remote engine: its pid 3999942 is, here, a process of a sentinel
    # container that has a pid namespace of its own, started at the same time.
    proc = _proc(
        tmp_path, 3999942, cgroup=_v1(SENTINEL), nspid=[3999942] * OURS + [1], started=100.0
    )
    with pytest.raises(UnsafeTarget, match="does not name container c8409bc530b8"):
        linux.prove_first_process(3999942, CONTAINER, started_at=BOOT + 100.3, proc=proc)


def test_a_process_deeper_in_the_container_is_not_its_first(tmp_path):
    proc = _proc(
        tmp_path, 3999943, cgroup=_v1(CONTAINER), nspid=[3999943] * OURS + [7], started=100.0
    )
    with pytest.raises(UnsafeTarget, match="first process of a pid namespace just below ours"):
        linux.prove_first_process(3999943, CONTAINER, started_at=BOOT + 100.3, proc=proc)


def test_a_process_of_a_nested_engine_is_refused(tmp_path):
    # An engine inside a container: its containers' processes are two levels below.
    proc = _proc(
        tmp_path, 3999944, cgroup=_v1(CONTAINER), nspid=[3999944] * OURS + [88, 1], started=100.0
    )
    with pytest.raises(UnsafeTarget, match=r"its pid in each namespace: \["):
        linux.prove_first_process(3999944, CONTAINER, started_at=BOOT + 100.3, proc=proc)


def test_a_container_sharing_our_pid_namespace_is_proved_only_as_such(tmp_path):
    proc = _proc(tmp_path, 3999945, cgroup=_v1(CONTAINER), nspid=[3999945] * OURS, started=100.0)
    assert linux.prove_first_process(
        3999945, CONTAINER, started_at=BOOT + 100.3, proc=proc, pid_namespace="host"
    )
    with pytest.raises(UnsafeTarget, match="first process of a pid namespace"):
        linux.prove_first_process(3999945, CONTAINER, started_at=BOOT + 100.3, proc=proc)


@pytest.mark.parametrize("started_at", [BOOT + 100.0 - 31, BOOT + 100.0 - 1.5])
def test_a_process_that_did_not_start_with_the_container_is_refused(tmp_path, started_at):
    # 31 s after the process began: a process older than the container's run. 1.5 s
    # before it: a process made after the container started (a restart meanwhile).
    proc = _proc(
        tmp_path, 3999946, cgroup=_v1(CONTAINER), nspid=[3999946] * OURS + [1], started=100.0
    )
    with pytest.raises(UnsafeTarget, match="not that run of it"):
        linux.prove_first_process(3999946, CONTAINER, started_at=started_at, proc=proc)


def test_our_own_processes_are_never_a_containers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(UnsafeTarget, match="does not name container"):
            linux.prove_first_process(child.pid, CONTAINER, started_at=None)
    finally:
        child.kill()
        child.wait()


@given(
    names_it=st.booleans(),
    levels=st.integers(min_value=0, max_value=3),
    last=st.sampled_from([1, 2, 57]),
    mode=st.sampled_from(["own", "host", "other"]),
    made_before=st.floats(min_value=-5.0, max_value=60.0, allow_nan=False),
)
def test_a_pid_is_proved_exactly_when_every_part_holds(names_it, levels, last, mode, made_before):
    """Ground truth by construction: cgroup, pid namespace depth (and pid 1 for a
    namespace of its own), start time within the window; every mix of right and
    wrong parts, judged exactly."""
    cgroup = _v1(CONTAINER if names_it else SENTINEL)
    nspid = [3999900] * OURS + ([last] * levels)
    depth_ok = len(nspid) == (OURS if mode == "host" else OURS + 1)
    first_ok = mode != "own" or nspid[-1] == 1
    # The boot time is whole seconds: a start reads up to 1 s early, so the window's
    # edge moves by that much; keep clear of both edges by a tick.
    if abs(made_before - linux.CREATED_BEFORE_START_S) < 0.02 or abs(made_before + 1) < 0.02:
        return
    time_ok = -1 <= made_before <= linux.CREATED_BEFORE_START_S
    expected = names_it and depth_ok and first_ok and time_ok
    with tempfile.TemporaryDirectory() as folder:
        proc = _proc(Path(folder), 3999900, cgroup=cgroup, nspid=nspid, started=100.0)
        started_at = BOOT + 100.0 + made_before
        try:
            linux.prove_first_process(
                3999900, CONTAINER, started_at=started_at, proc=proc, pid_namespace=mode
            )
            proved = True
        except UnsafeTarget:
            proved = False
    assert proved == expected


def test_a_remote_engine_refuses_in_one_sentence_naming_it_and_the_way_forward():
    engine = Engine("tcp://127.0.0.1:2375", "PB2Q:QZKN:BJBS:XXXX", "a803870bf5c4", "6.1")
    engine.learn(False, "container web's pid 365 is not its process here")
    engine.learn(True, "a later proof does not overturn it")
    error = engine.refusal("act on 'web' through this machine's kernel")
    assert isinstance(error, RemoteEngine)
    text = str(error)
    assert "tcp://127.0.0.1:2375" in text
    assert "PB2Q:QZKN:BJBS" in text
    assert "pid 365 is not its process here" in text
    assert "chaos.stop" in text
    assert "run pytest as root where the engine runs" in text
    assert "REMOTE" in engine.describe()
