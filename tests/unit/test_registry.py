"""The registry of faults keeps its declarations: every journal kind a fault writes has
an undo, every leftover it can leave has a sweep, every grid a schedule can draw, the
docs' table is the registrations' own words. A fault added without any of these fails
here, by name (the teardown matrix and the kill -9 cases are generated from the same
registrations: tests/integration/test_every_fault.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings

from pytest_chaos import ConfigurationError, registry, schedules
from pytest_chaos.registry import LEFTOVERS, REQUIREMENTS, fault
from pytest_chaos.schedule import step_kind

PACKAGE = Path(registry.__file__).parent
README = Path(__file__).parents[2] / "README.md"  # the checkout's, or check-wheel's copy
BUILT_IN = {k: v for k, v in registry.faults().items() if v.module.startswith("pytest_chaos.")}
WRITES = re.compile(
    r"""(?:journal(?:ed(?:_in)?\(\s*[\w.]+|\.write\()\s*,?\s*\n?\s*|journal_kind=)"([\w-]+)\""""
)


def test_the_registry_keeps_every_declaration():
    assert registry.gaps() == []


def test_every_built_in_fault_declares_what_the_rest_derives_from_it():
    for kind in BUILT_IN.values():
        assert kind.journal, (
            f"{kind.name} declares no journal kind: how is it undone after kill -9?"
        )
        assert kind.leaves, f"{kind.name} declares no leftover: what does a crash sweep look for?"
        assert kind.example, f"{kind.name} declares no example: the matrix cannot apply it"
        assert kind.summary, f"{kind.name} has no docstring"
        assert kind.undo, f"{kind.name}'s docstring says no 'Undo:'"
        assert set(kind.requires) <= set(REQUIREMENTS)


def test_every_journal_kind_written_has_an_undo_and_is_declared():
    written = {
        kind: path.name
        for path in PACKAGE.rglob("*.py")
        for kind in WRITES.findall(path.read_text())
    }
    assert written, "the pattern finds no journal write: it no longer matches the code"
    undos = registry.undos()
    assert sorted(k for k in written if k not in undos) == []
    declared = {entry for kind in BUILT_IN.values() for entry in kind.journal}
    # The swarm's own entry is not a fault's: it is the cluster, torn down as one.
    assert sorted(set(written) - declared - {"swarm-cluster"}) == []
    assert sorted(declared - set(written)) == []


def test_every_leftover_has_a_sweep_and_every_sweep_a_leftover():
    declared = {leftover for kind in BUILT_IN.values() for leftover in kind.leaves}
    assert sorted(declared - set(registry.sweepers())) == []
    assert sorted(set(registry.sweepers()) - declared) == []
    assert set(registry.sweepers()) <= set(LEFTOVERS)


def test_the_readme_table_is_the_registrations_own_words():
    text = README.read_text()
    start = text.index("<!-- faults:")
    table = text[text.index("\n", start) + 1 : text.index("<!-- /faults -->")]
    assert table.splitlines() == registry.docs_table(), (
        "the README's table of faults is stale: paste `python -m pytest_chaos faults`"
    )


SCHEDULABLE = sorted(name for name, kind in BUILT_IN.items() if kind.schedulable)


def test_every_service_fault_with_a_grid_can_be_drawn():
    for name in SCHEDULABLE:
        drawn = step_kind(BUILT_IN[name])
        assert drawn.params == dict(BUILT_IN[name].grid or {})


@settings(max_examples=50)
@given(schedules(["a", "b"], kinds=SCHEDULABLE, max_steps=5))
def test_a_schedule_over_every_schedulable_fault_names_only_their_parameters(schedule):
    for step in schedule.steps:
        grid = BUILT_IN[step.kind].grid or {}
        assert {name for name, _ in step.params} == set(grid)
        assert all(value in grid[name] for name, value in step.params)


@pytest.mark.parametrize(
    "name", sorted(name for name, kind in BUILT_IN.items() if not kind.schedulable)
)
def test_a_fault_a_step_cannot_call_is_refused_by_name_before_anything_is_drawn(name):
    with pytest.raises(ConfigurationError, match=f"a schedule cannot draw fault '{name}': it"):
        schedules(["a"], kinds=[name])


def test_a_declaration_with_an_unknown_word_is_refused_where_it_is_made():
    with pytest.raises(ConfigurationError, match=r"unknown leftover sand.*known ones are"):
        fault("sandcastle", leaves=["sand"])
    with pytest.raises(ConfigurationError, match="unknown need wings"):
        fault("flying", requires=["wings"])
    with pytest.raises(ConfigurationError, match="schedule parameter with no value"):
        fault("empty", grid={"level": ()})


def test_the_signature_in_the_docs_is_the_call_a_user_writes():
    assert BUILT_IN["kill"].signature() == (
        "kill(service, signal='SIGKILL', *, recovery_timeout=None, process=None, start_after=None)"
    )
    assert BUILT_IN["io_throttle"].signature() == "io_throttle(service, *, path=None, **limits)"


def test_an_example_fills_its_roles():
    assert BUILT_IN["latency"].call(service="web", peer="db") == (
        "chaos.latency('web', '30ms', peers=['db'])"
    )
