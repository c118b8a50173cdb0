"""The pid safety checks, against real processes and a fake /proc."""

import os
import subprocess
import sys

import pytest

from pytest_chaos import UnsafeTarget
from pytest_chaos.targets import linux

CONTAINER = "c8409bc530b8319a4b7273b09086914501b6cd0480bf15ef172e149efd4f1c95"


@pytest.mark.parametrize("pid", [0, 1, -1, -42, None, "12", True, 2.5])
def test_group_and_init_pids_are_refused(pid):
    with pytest.raises(UnsafeTarget, match="refusing"):
        linux.check_pid(pid, CONTAINER)


def test_our_own_pid_is_refused():
    with pytest.raises(UnsafeTarget, match="this pytest process"):
        linux.check_pid(os.getpid(), CONTAINER)


def test_a_pid_outside_the_container_is_refused():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(UnsafeTarget, match="does not name container c8409bc530b8"):
            linux.check_pid(child.pid, CONTAINER)
    finally:
        child.kill()
        child.wait()


def test_a_stale_pid_is_refused():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(UnsafeTarget, match="no longer exists"):
        linux.check_pid(child.pid, CONTAINER)


def test_an_empty_container_id_is_refused():
    with pytest.raises(UnsafeTarget, match="no container id"):
        linux.check_pid(12345, "")


def _fake_proc(tmp_path, tree):
    for pid, (name, kids, cgroup) in tree.items():
        task = tmp_path / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text(" ".join(map(str, kids)))
        (tmp_path / str(pid) / "comm").write_text(name + "\n")
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    return tmp_path


def test_main_process_is_the_only_child_of_an_init(tmp_path):
    proc = _fake_proc(tmp_path, {500: ("tini", [501], ""), 501: ("postgres", [502, 503], "")})
    assert linux.main_process(500, proc) == 501


def test_main_process_without_init_is_the_first_process(tmp_path):
    proc = _fake_proc(tmp_path, {500: ("nginx", [501], "")})
    assert linux.main_process(500, proc) == 500


def test_an_init_with_several_children_is_ambiguous_and_says_how_to_name_one(tmp_path):
    proc = _fake_proc(
        tmp_path,
        {500: ("tini", [501, 502], ""), 501: ("beam.smp", [], ""), 502: ("epmd", [], "")},
    )
    with pytest.raises(UnsafeTarget, match=r"has 2 children: beam\.smp, epmd, .*process='NAME'"):
        linux.main_process(500, proc)


def test_cgroup_v1_and_v2_paths_name_the_container(tmp_path):
    v1 = f"4:memory:/docker/{CONTAINER}\n"
    v2 = f"0::/system.slice/docker-{CONTAINER}.scope\n"
    proc = _fake_proc(tmp_path, {700: ("x", [], v1), 701: ("x", [], v2)})
    assert linux.check_pid(700, CONTAINER, proc=proc) == 700
    assert linux.check_pid(701, CONTAINER, proc=proc) == 701


def _fake_stat(tmp_path, tree):
    """pid -> (comm, parent)"""
    for pid, (name, ppid) in tree.items():
        d = tmp_path / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(name + "\n")
        (d / "stat").write_text(
            f"{pid} ({name}) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 1234 0\n"
        )
    return tmp_path


def test_the_top_process_of_a_name_is_the_postmaster_not_its_backends(tmp_path):
    proc = _fake_stat(
        tmp_path, {10: ("sh", 1), 11: ("postgres", 10), 12: ("postgres", 11), 13: ("postgres", 11)}
    )
    assert linux.top_process_named({10, 11, 12, 13}, "postgres", proc) == 11


@pytest.mark.parametrize("tree", [{10: ("sh", 1)}, {11: ("postgres", 1), 12: ("postgres", 1)}])
def test_no_or_several_top_processes_of_a_name_are_refused(tmp_path, tree):
    proc = _fake_stat(tmp_path, tree)
    with pytest.raises(UnsafeTarget, match="expected one process named 'postgres'"):
        linux.top_process_named(set(tree), "postgres", proc)
