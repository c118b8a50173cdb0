"""Node faults on a local three-node Swarm: a frozen node is lost to its peers and back
when thawed; a node cut off is Down and Ready again after the heal; a crashed node is
Down, and rejoins once its engine booted again; each is undone
by the journal after kill -9 of the pytest that applied them, and the cluster torn
down with them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from swarm_owner import kill_9_once_in_force

from pytest_chaos import wait_for_recovery
from pytest_chaos.faults.swarm import (
    _is_frozen,
    crash_node,
    freeze_node,
    partition_node,
    split_cluster,
)
from pytest_chaos.journal import Journal, new_run_id
from pytest_chaos.targets import swarm_teardown
from pytest_chaos.targets.cgroup import cgroup_roots
from pytest_chaos.targets.swarm_nodes import LocalSwarm

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    journal = Journal(tmp_path_factory.mktemp("journal"), new_run_id())
    made = LocalSwarm(journal.run_id, size=3, journal=journal)
    try:
        made.up()
        yield made
    finally:
        made.down()


def _ready(cluster: LocalSwarm) -> set[str]:
    return cluster.ready_nodes()


def test_a_frozen_node_is_lost_to_its_peers_and_back_once_thawed(cluster, record_property):
    with freeze_node(cluster, "node3") as frozen:
        assert frozen.effect() is not None
        assert frozen.effect().took, frozen.effect()
        assert all(_is_frozen(Path(g)) for g in frozen.groups)
        down = wait_for_recovery(
            lambda: "node3" not in _ready(cluster), timeout=60, interval=0.1,
            what="node3 marked down",
        )  # fmt: skip
    assert not any(_is_frozen(Path(g)) for g in frozen.groups)
    back = wait_for_recovery(
        lambda: _ready(cluster) == {"node1", "node2", "node3"}, timeout=60, interval=0.1,
        what="node3 ready again",
    )  # fmt: skip
    record_property("node_down_after_freeze_s", round(down.recovery_time_s, 3))
    record_property("node_ready_after_thaw_s", round(back.recovery_time_s, 3))
    assert cluster.unavailable == set()


def test_a_node_cut_off_is_down_and_ready_again_after_the_heal(cluster, record_property):
    with partition_node(cluster, "node2") as cut:
        down = wait_for_recovery(
            lambda: "node2" not in _ready(cluster), timeout=60, interval=0.1,
            what="node2 marked down",
        )  # fmt: skip
        assert cut.dropped() > 0
    ready = wait_for_recovery(
        lambda: _ready(cluster) == {"node1", "node2", "node3"}, timeout=60, interval=0.1,
        what="node2 ready again",
    )  # fmt: skip
    record_property("node_down_after_partition_s", round(down.recovery_time_s, 3))
    record_property("node_ready_after_heal_s", round(ready.recovery_time_s, 3))
    with swarm_nodes_netns(cluster, "node2") as ns:
        assert "pytest_chaos_node" not in ns.run(["nft", "list", "tables"])


def test_a_crashed_node_is_lost_and_rejoins_once_booted(cluster, record_property):
    engine = cluster.node("node3").pid
    with crash_node(cluster, "node3") as crashed:
        assert crashed.effect().took, crashed.effect()
        assert crashed.processes >= 2  # dockerd and its containerd at least
        assert not Path(f"/proc/{engine}").exists()
        down = wait_for_recovery(
            lambda: "node3" not in _ready(cluster), timeout=60, interval=0.1,
            what="node3 marked down",
        )  # fmt: skip
    booted = cluster.node("node3").pid
    assert booted != engine
    assert Path(f"/proc/{booted}").exists()
    ready = wait_for_recovery(
        lambda: _ready(cluster) == {"node1", "node2", "node3"}, timeout=60, interval=0.1,
        what="node3 ready again",
    )  # fmt: skip
    # The engine that booted is the one the journal knows: a kill -9 now would still
    # tear the whole cluster down.
    entry = next(e for e in cluster.journal.entries() if e.kind == "swarm-cluster")
    journaled = entry.data["nodes"][2]
    assert (journaled["name"], journaled["pid"]) == ("node3", booted)
    record_property("node_down_after_crash_s", round(down.recovery_time_s, 3))
    record_property("node_ready_after_boot_s", round(ready.recovery_time_s, 3))
    record_property("node_boot_s", round(crashed.undone_at - crashed.lifted_at, 3))
    assert cluster.unavailable == set()


def test_a_cluster_split_in_two_carries_on_on_the_majority_side(tmp_path, record_property):
    journal = Journal(tmp_path, new_run_id())
    four = LocalSwarm(journal.run_id, size=4, managers=3, journal=journal)
    try:
        four.up()
        # node1 (a manager) and node4 (a worker) against node2 and node3, the
        # managers' majority.
        with split_cluster(four, ["node1", "node4"], journal=journal) as split:
            assert [p.target for p in split.parts] == ["node1", "node4"]
            assert all(p.peers == ("node2", "node3") for p in split.parts)
            majority = wait_for_recovery(
                lambda: four.ready_nodes() == {"node2", "node3"}, timeout=90, interval=0.2,
                what="the majority side seeing node1 and node4 down",
            )  # fmt: skip
            assert split.effect().took, split.effect()
        healed = wait_for_recovery(
            lambda: four.ready_nodes() == {"node1", "node2", "node3", "node4"}, timeout=90,
            interval=0.2, what="all four nodes ready after the heal",
        )  # fmt: skip
        assert [e.kind for e in journal.entries()] == ["swarm-cluster"]
    finally:
        four.down()
    record_property("split_minority_down_s", round(majority.recovery_time_s, 3))
    record_property("split_all_ready_after_heal_s", round(healed.recovery_time_s, 3))


def swarm_nodes_netns(cluster: LocalSwarm, node: str):
    from pytest_chaos.faults.swarm import _node_netns

    return _node_netns(next(n.netns for n in cluster.nodes if n.name == node))


OWNER = """
import sys, time
from pathlib import Path
from pytest_chaos.faults.swarm import crash_node, freeze_node, partition_node
from pytest_chaos.journal import Journal
from pytest_chaos.targets.swarm_nodes import LocalSwarm
journal = Journal(Path(sys.argv[1]), sys.argv[2])
cluster = LocalSwarm(sys.argv[2], size=3, journal=journal)
cluster.up()
with partition_node(cluster, "node2", journal=journal):
    with freeze_node(cluster, "node3", journal=journal):
        with crash_node(cluster, "node1", journal=journal):
            print("in force", flush=True)
            time.sleep(600)
"""


def test_node_faults_and_their_swarm_are_undone_by_the_journal_after_kill_9(tmp_path):
    run_id = new_run_id()
    kill_9_once_in_force(OWNER, tmp_path, run_id, "in force")
    kinds = sorted(e.kind for e in Journal(tmp_path, new_run_id()).entries())
    assert kinds == [
        "swarm-cluster", "swarm-node-crash", "swarm-node-freeze", "swarm-node-partition"
    ]  # fmt: skip
    replayed = Journal(tmp_path, new_run_id()).replay()
    outcomes = {r.entry.kind: (r.outcome, r.error) for r in replayed}
    assert all(error is None for _, error in outcomes.values()), outcomes
    assert "removed namespaces" in outcomes["swarm-cluster"][0]
    deadline = time.monotonic() + 15
    while [n for n in swarm_teardown.netns_names() if run_id in n] or any(
        (root / f"pytest-chaos-swarm-{run_id}-node1").exists() for root in cgroup_roots()
    ):
        assert time.monotonic() < deadline, "the swarm outlived the journal's replay"
        time.sleep(0.1)  # poll interval while init reaps the engines
    assert Journal(tmp_path, new_run_id()).entries() == []
