"""Attaching to a swarm that runs already (--chaos-swarm-manager): pytest-chaos finds
the stack through a manager's Docker API and each task through its node's engine,
acts on the tasks, leaves the stack as it found it, and refuses clearly what it
cannot do there (node faults, a node whose engine was not given). The swarm here is
a local one made by this module, standing in for one made by somebody else."""

from __future__ import annotations

import pytest
from test_swarm_nodes import deploy_sleepers

from pytest_chaos.journal import Journal, new_run_id
from pytest_chaos.targets.swarm_nodes import LocalSwarm

pytestmark = [pytest.mark.root, pytest.mark.slow]

TESTS = """
import pytest
from pytest_chaos import ConfigurationError, UnknownService

pytestmark = pytest.mark.chaos_backends("swarm")

def test_every_task_is_killed_and_swarm_replaces_it(chaos):
    killed = chaos.kill("sleeper.*")
    assert [k.target for k in killed] == chaos.tasks("sleeper") == [
        "sleeper.1", "sleeper.2", "sleeper.3"]
    assert all(k.effect().took for k in killed)
    chaos.undo(killed)
    assert all(k.restored_by == "swarm" for k in killed)

def test_node_faults_are_for_a_local_swarm(chaos):
    with pytest.raises(ConfigurationError, match="nodes of an attached swarm"):
        chaos.partition_node("node2")
"""

WITHOUT_AN_ENGINE = """
import pytest
from pytest_chaos import UnknownService

pytestmark = pytest.mark.chaos_backends("swarm")

def test_a_task_on_a_node_without_an_engine_is_refused(chaos):
    with pytest.raises(UnknownService, match="--chaos-swarm-engine node3=URL"):
        chaos.kill("sleeper@node3")
"""


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    journal = Journal(tmp_path_factory.mktemp("journal"), new_run_id())
    cluster = LocalSwarm(journal.run_id, size=3, journal=journal)
    try:
        cluster.up()
        # One task per node, so that node3 has one.
        project = deploy_sleepers(cluster, f"theirs{journal.run_id}", maxreplicas=1)
        yield cluster, project
    finally:
        cluster.down()


def _run(pytester, cluster: LocalSwarm, stack: str, engines: list[str], body: str):
    pytester.makepyfile(test_attached=body)
    return pytester.runpytest_subprocess(
        "--chaos-backend=swarm",
        f"--chaos-swarm-manager={cluster.nodes[0].url}",
        f"--chaos-swarm-stack={stack}",
        *[f"--chaos-swarm-engine={n.name}={n.url}" for n in cluster.nodes if n.name in engines],
        f"--chaos-journal={pytester.path / 'journal'}",
        "-p", "no:cacheprovider",
    )  # fmt: skip


def test_faults_act_on_an_attached_swarm_which_is_left_as_found(pytester, swarm):
    cluster, project = swarm
    services = sorted(s.id for s in cluster.manager().services.list())
    result = _run(pytester, cluster, project.name, ["node1", "node2", "node3"], TESTS)
    result.assert_outcomes(passed=2)
    # Nothing deployed, nothing removed: the same service, converged again, and no
    # journal entry left.
    assert sorted(s.id for s in cluster.manager().services.list()) == services
    assert project.converged("sleeper")
    assert list((pytester.path / "journal").glob("*/*.json")) == []


def test_a_node_whose_engine_was_not_given_is_named(pytester, swarm):
    cluster, project = swarm
    result = _run(pytester, cluster, project.name, ["node1", "node2"], WITHOUT_AN_ENGINE)
    result.assert_outcomes(passed=1)


def test_a_stack_that_is_not_there_is_a_clear_error(pytester, swarm):
    cluster, _ = swarm
    result = _run(pytester, cluster, "nosuchstack", ["node1"], TESTS)
    result.assert_outcomes(errors=2)  # an error of the set-up, not of the system
    result.stdout.fnmatch_lines(["*has no stack 'nosuchstack'*deploy it first*"])
