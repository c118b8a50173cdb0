"""One task, every task, a task by node: a service of several tasks on a local Swarm
is addressed by slot (``sleeper.2``), by node (``sleeper@node2``) or all at once
(``sleeper.*``), and every fault acts on the task it was given; a bad name or argument
changes nothing."""

from __future__ import annotations

import time

import pytest
from test_swarm_nodes import deploy_sleepers

from pytest_chaos.chaos import Chaos
from pytest_chaos.errors import ChaosError, ConfigurationError, UnknownService
from pytest_chaos.journal import Journal, new_run_id
from pytest_chaos.targets import linux
from pytest_chaos.targets.swarm import SwarmProject
from pytest_chaos.targets.swarm_nodes import LocalSwarm

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    journal = Journal(tmp_path_factory.mktemp("journal"), new_run_id())
    cluster = LocalSwarm(journal.run_id, size=3, journal=journal)
    try:
        cluster.up()
        made = deploy_sleepers(cluster, f"tasks{journal.run_id}")
        yield made
    finally:
        cluster.down()


def _chaos(project: SwarmProject) -> Chaos:
    return Chaos(lambda: project, timeout=60.0, record=lambda *_: None, journal=project.journal)


def test_each_task_has_a_name_by_slot_and_by_node(project):
    assert project.task_names("sleeper") == ["sleeper.1", "sleeper.2", "sleeper.3"]
    by_slot = {n: project.service(n) for n in project.task_names("sleeper")}
    assert len({s.container_id for s in by_slot.values()}) == 3
    assert all(s.name == "sleeper" and s.label == n for n, s in by_slot.items())
    # The plain name is the lowest slot; a task by node is the one on that node.
    assert project.service("sleeper").container_id == by_slot["sleeper.1"].container_id
    two = by_slot["sleeper.2"]
    assert project.service(f"sleeper@{two.node}").container_id == two.container_id


def test_a_bad_task_name_is_refused_naming_what_there_is(project):
    with pytest.raises(UnknownService, match=r"no running task 'sleeper.7'.*sleeper\.1"):
        project.service("sleeper.7")
    with pytest.raises(ConfigurationError, match="no node 'node9'"):
        project.service("sleeper@node9")
    with pytest.raises(UnknownService, match=r"has no service 'nope\.1'"):
        project.service("nope.1")
    # A task cannot be stopped on its own: Swarm would start another.
    with pytest.raises(ConfigurationError, match="one task of service"):
        project.service("sleeper.2").stop(1.0)


def test_a_fault_on_every_task_acts_on_each_and_swarm_replaces_them(project):
    chaos = _chaos(project)
    before = {n: project.service(n) for n in chaos.tasks("sleeper")}
    pids = {n: (s.init_pid(), linux.start_time(s.init_pid())) for n, s in before.items()}
    try:
        killed = chaos.kill("sleeper.*")
        assert [k.target for k in killed] == ["sleeper.1", "sleeper.2", "sleeper.3"]
        assert all(k.effect().took for k in killed), [k.effect() for k in killed]
        assert not any(linux.is_alive(pid, start) for pid, start in pids.values())
        began = time.monotonic()
        chaos.undo(killed)
        replaced = time.monotonic() - began
    finally:
        chaos.undo_all()
    after = {project.service(n).container_id for n in chaos.tasks("sleeper")}
    assert after.isdisjoint(s.container_id for s in before.values())
    assert len(after) == 3
    assert all(k.restored_by == "swarm" for k in killed), [k.restored_by for k in killed]
    assert replaced < 60


def test_a_bad_argument_to_every_task_changes_nothing(project):
    chaos = _chaos(project)
    alive = [project.service(n).init_pid() for n in chaos.tasks("sleeper")]
    with pytest.raises(ChaosError, match="SIGNOPE"):
        chaos.kill("sleeper.*", signal="SIGNOPE")
    assert chaos.active == []
    assert [project.service(n).init_pid() for n in chaos.tasks("sleeper")] == alive
