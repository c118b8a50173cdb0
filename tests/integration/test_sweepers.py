"""The crash sweep's last layer, each registered sweeper on the real stack: what a run
whose pytest is gone left, with no journal entry to undo it, is removed when its run's
id proves it ours (iptables chains, root qdiscs, cgroups of ours and their processes
and files, hog connections), and named, not changed, when nothing proves it (a paused
container, a cgroup limit). What a live run, another run or someone else left stays.
(The nft tables' sweep: test_network_faults.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pytest_chaos import registry, wait_for_recovery
from pytest_chaos.faults.nfqueue import drop_mangle_table_if_ours, has_mangle_table
from pytest_chaos.faults.qdisc import delete_root, qdisc_major, qdisc_session, root_qdisc
from pytest_chaos.faults.resources import OWN_PREFIX, data_path
from pytest_chaos.registry import DeadRuns
from pytest_chaos.targets.cgroup import OwnCgroup, cgroup_of, own_cgroup_path
from pytest_chaos.targets.netns import open_netns

pytestmark = [pytest.mark.root]

DEAD = "abc12345"  # a run of this journal whose pytest is gone
ALIVE = "abc99999"  # a live run whose qdisc major is the dead one's (12 bits alike)
OTHER = "fed54321"  # a run this journal does not know


def dead(project, *, alive: frozenset[str] = frozenset()) -> DeadRuns:
    return DeadRuns({DEAD: {project.name}}, project.client, alive)


def sweep(leftover: str, runs: DeadRuns) -> list[str]:
    return registry.sweepers()[leftover](runs)


def test_a_dead_runs_root_qdisc_is_swept_and_no_other(chaos_project):
    api = chaos_project.service("trading-api")
    with qdisc_session(api.init_pid(), api.name, "eth0") as (ipr, index):
        ipr.tc("add", "tbf", index, handle=f"{qdisc_major(DEAD):x}:", rate="10mbit",
               burst=32768, latency=400000)  # fmt: skip
    try:
        # A live run with the same major: nothing tells them apart; it stays.
        said = sweep("qdisc", dead(chaos_project, alive=frozenset({ALIVE})))
        assert any(s.startswith("left") and "tbf" in s for s in said), said
        with qdisc_session(api.init_pid(), api.name, "eth0") as (ipr, index):
            assert root_qdisc(ipr, index) == "tbf"
        said = sweep("qdisc", dead(chaos_project))
        assert any(s.startswith("swept") and f"run {DEAD}" in s for s in said), said
        with qdisc_session(api.init_pid(), api.name, "eth0") as (ipr, index):
            assert root_qdisc(ipr, index) != "tbf"
            # Someone else's root qdisc (handle 1:): not ours, whatever runs died.
            ipr.tc("add", "tbf", index, handle="1:", rate="10mbit", burst=32768, latency=400000)
        assert not [s for s in sweep("qdisc", dead(chaos_project)) if "swept" in s]
        with qdisc_session(api.init_pid(), api.name, "eth0") as (ipr, index):
            assert root_qdisc(ipr, index) == "tbf"
    finally:
        with qdisc_session(api.init_pid(), api.name, "eth0") as (ipr, index):
            delete_root(ipr, index)


def test_a_dead_runs_iptables_chain_is_swept_and_another_runs_left(chaos_project):
    api = chaos_project.service("trading-api")
    chains = [f"PYTEST_CHAOS_{DEAD.upper()}_0001", f"PYTEST_CHAOS_{OTHER.upper()}_0001"]
    rules = ["*mangle"] + [f":{c} - [0:0]" for c in chains]
    rules += [f"-I OUTPUT -j {c}" for c in chains] + ["COMMIT", ""]
    with open_netns(api.init_pid(), api.name) as ns:
        existed = has_mangle_table(ns)
        ns.run(["iptables-restore", "-w", "5", "--noflush"], input_text="\n".join(rules))
    try:
        said = sweep("iptables-chain", dead(chaos_project))
        assert any(s.startswith("swept") and chains[0] in s for s in said), said
        assert any(s.startswith("left") and chains[1] in s for s in said), said
        with open_netns(api.init_pid(), api.name) as ns:
            listed = ns.run(["iptables", "-w", "5", "-t", "mangle", "-S"])
        assert chains[0] not in listed
        assert chains[1] in listed
    finally:
        with open_netns(api.init_pid(), api.name) as ns:
            for chain in chains:
                listed = ns.run(["iptables", "-w", "5", "-t", "mangle", "-S"])
                if f"-N {chain}" in listed:
                    ns.run(["iptables", "-w", "5", "-t", "mangle", "-D", "OUTPUT", "-j", chain])
                    ns.run(["iptables", "-w", "5", "-t", "mangle", "-X", chain])
            drop_mangle_table_if_ours(ns, existed)  # the next tests find it as it was


def test_a_dead_runs_cgroup_and_scratch_directory_are_swept(chaos_project):
    postgres = chaos_project.service("postgres")
    group = OwnCgroup(own_cgroup_path(f"{OWN_PREFIX}{DEAD}-0001"))
    group.create()
    sleeper = subprocess.Popen([*group.exec_prefix(), "sleep", "300"], start_new_session=True)
    found = Path(data_path(postgres))
    scratch = (found if found.is_dir() else found.parent) / f"{OWN_PREFIX}{DEAD}-0001"
    scratch.mkdir()
    theirs = (found if found.is_dir() else found.parent) / f"{OWN_PREFIX}{OTHER}-0001"
    theirs.mkdir()
    try:
        wait_for_recovery(lambda: len(group.pids()) == 1, timeout=10, what="the sleeper")
        said = sweep("own-cgroup", dead(chaos_project))
        assert any(f"swept cgroup {group.path}" in s for s in said), said
        assert sleeper.wait(timeout=15) is not None
        assert not group.path.exists()
        assert not scratch.exists()
        assert theirs.exists()  # not a dead run of this journal
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        group.stop_all()
        group.remove()
        for directory in (scratch, theirs):
            if directory.exists():
                directory.rmdir()


def test_a_limit_and_a_pause_that_nothing_proves_ours_are_named_not_changed(chaos_project):
    api = chaos_project.service("trading-api")
    cg = cgroup_of(api.main_pid())
    if cg.version == 1:
        file, value, before = cg.path("cpu", "cpu.cfs_quota_us"), "50000", "-1"
    else:
        file, value, before = cg.path("cpu", "cpu.max"), "50000 100000", "max 100000"
    assert file.read_text().strip() == before
    file.write_text(value)
    redis = chaos_project.service("redis").container()
    redis.pause()
    try:
        said = sweep("cgroup-limit", dead(chaos_project))
        assert any(
            s.startswith("left") and "trading-api" in s and file.name in s and value in s
            for s in said
        ), said
        assert file.read_text().strip() == value  # named, not changed
        said = sweep("container-state", dead(chaos_project))
        assert any(s.startswith("left") and "redis paused" in s for s in said), said
        redis.reload()
        assert redis.attrs["State"]["Paused"]
    finally:
        file.write_text(before)
        redis.reload()
        if redis.attrs["State"]["Paused"]:
            redis.unpause()
        # Docker marks a paused container unhealthy: the next tests find it healthy.
        healthy = chaos_project.service("redis").is_healthy
        wait_for_recovery(healthy, timeout=60, what="redis healthy after its pause")


def test_a_dead_runs_hog_connections_are_ended(chaos_project, exchange):
    import psycopg

    held = [
        psycopg.connect(exchange.db_dsn, application_name=f"pytest_chaos_hog_{name}")
        for name in (DEAD, OTHER)
    ]
    try:
        said = sweep("postgres-connection", dead(chaos_project))
        assert any(s.startswith("swept") and f"run {DEAD}" in s for s in said), said

        def ended() -> bool:
            try:
                held[0].execute("SELECT 1")
            except psycopg.OperationalError:
                return True
            return False

        wait_for_recovery(ended, timeout=10, transient=(), what="the hog connection's end")
        held[1].execute("SELECT 1")  # another run's connection stays
    finally:
        for conn in held:
            conn.close()
