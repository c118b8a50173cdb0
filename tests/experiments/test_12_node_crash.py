"""Experiment 12 (Swarm only): the trading API's node crashes.

Every process of the node dies at once (its engine, containerd and tasks), as when a
machine loses its power. The managers mark it Down and start the trading API on
another node; unlike a partition (experiment 11) no old task survives to serve beside
the new one. Orders are taken again well within the guide's 60 s, rescheduling
included, and no acknowledged order is lost. When the node boots again it rejoins the
cluster, Ready, and the task it ran before the crash is not started again there.
"""

from __future__ import annotations

import time

import pytest

from pytest_chaos import wait_for_recovery
from pytest_chaos.targets import linux

pytestmark = [
    pytest.mark.experiment("12"),
    pytest.mark.chaos_backends("swarm"),
    pytest.mark.root,
    pytest.mark.slow,
]

RECOVERY_LIMIT_S = 60.0


def test_node_crash_tasks_rescheduled_node_rejoins(chaos, exchange):
    wait_for_recovery(exchange.accepts_orders, timeout=60, what="the exchange's steady state")
    project = chaos.project
    cluster = project.cluster
    api = chaos.service("trading-api")
    node, old, old_pid = api.node, api.container_id, api.init_pid()
    old_start = linux.start_time(old_pid)

    def replaced() -> bool:
        return any(t.container_id != old for t in project.tasks("trading-api"))

    with exchange.load(orders=10, market=5, ready=5) as load:
        load.wait_for_records("orders", 10)
        leader = cluster.leader()
        lost = chaos.crash_node(node)
        old_task_died = not linux.is_alive(old_pid, old_start)
        down = wait_for_recovery(
            lambda: node not in cluster.ready_nodes(), since=lost.applied_at,
            timeout=RECOVERY_LIMIT_S, interval=0.1, what=f"{node} marked down by the managers",
        )  # fmt: skip
        moved = wait_for_recovery(
            replaced, since=lost.applied_at, timeout=RECOVERY_LIMIT_S, interval=0.1,
            what="a replacement trading API task running",
        )  # fmt: skip
        recovery = wait_for_recovery(
            exchange.accepts_orders, since=lost.applied_at, timeout=RECOVERY_LIMIT_S,
            interval=0.05, what="order placement after the node crashed",
        )  # fmt: skip
        booting = time.monotonic()
        chaos.undo(lost)
        ready = wait_for_recovery(
            lambda: node in cluster.ready_nodes(), since=booting, timeout=RECOVERY_LIMIT_S,
            interval=0.1, what=f"{node} ready again after its boot",
        )  # fmt: skip
        load.wait_for_records("orders", len(load.records("orders")) + 5)

    chaos.record("node_processes_killed", lost.processes)
    # Losing the Raft leader adds an election (about 10 s: Swarm's election tick).
    chaos.record("raft_leader_lost", "yes" if leader == node else "no")
    chaos.record("node_down_after_s", round(down.recovery_time_s, 3))
    chaos.record("rescheduled_after_s", round(moved.recovery_time_s, 3))
    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3), key=True)
    chaos.record("node_ready_after_boot_s", round(ready.recovery_time_s, 3))
    exchange.check_no_orders_lost(load, chaos)

    assert lost.effect().took, lost.effect()
    assert old_task_died, "the crashed node's trading API task survived the crash"
    assert recovery.recovery_time_s < RECOVERY_LIMIT_S
    # Rescheduling is what brings the exchange back: never before the node is Down.
    assert moved.recovery_time_s >= down.recovery_time_s - 0.5, (down, moved)
    # One trading API, not on the crashed node's old container: the engine that booted
    # did not start the task Swarm had moved away.
    assert [t.container_id for t in project.tasks("trading-api")] != [old]
    assert old not in project.running_containers("trading-api")
    assert len(project.running_containers("trading-api")) == 1
