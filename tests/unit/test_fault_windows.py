"""Fault windows against generated histories whose answer is known: faults come and
go, clients invoke and complete operations in any interleaving, and the windows must
put each operation in the window of exactly the faults it may have met (in force at
its invoke or its completion), name the same faults one way whatever order an
operation saw them in, and call an operation that met none before, between or after
by where it falls; availability's figures must add up and say which faults each
``duringN`` was."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import History, availability
from pytest_chaos.observe.history import windows

FAULTS = ("partition api", "pause db", "kill cache")

actions = st.lists(
    st.one_of(
        st.tuples(st.just("toggle"), st.sampled_from(FAULTS)),
        st.tuples(st.just("invoke"), st.none()),
        st.tuples(st.just("complete"), st.sampled_from(("ok", "fail", "info"))),
    ),
    max_size=60,
)


def play(steps):
    """The history of ``steps``, and for each operation (in invoke order) the set of
    faults in force at its invoke and at its completion."""
    in_force: list[str] = []
    history = History(faults=lambda: tuple(in_force), clock=itertools.count().__next__)
    open_ops: list[tuple[object, set[str]]] = []
    truth: list[set[str]] = []
    for kind, arg in steps:
        if kind == "toggle":
            if arg in in_force:
                in_force.remove(arg)
            else:
                in_force.append(arg)
        elif kind == "invoke":
            client = history.client()
            client.invoke("write", len(truth))
            met = set(in_force)
            truth.append(met)
            open_ops.append((client, met))
        elif open_ops:
            client, met = open_ops.pop(0)
            met.update(in_force)
            client.complete(arg, error=None if arg == "ok" else "gone")
    return history, truth


@given(actions)
def test_each_operation_is_in_the_window_of_exactly_the_faults_it_may_have_met(steps):
    history, truth = play(steps)
    named = list(windows(history.operations()))
    assert len(named) == len(truth)
    met_any = [bool(t) for t in truth]
    for i, ((name, op), met) in enumerate(zip(named, truth, strict=True)):
        assert op.invoke.value == i
        if met:
            assert set(name.split(" + ")) == met
        elif not any(met_any[:i]):
            assert name == "before"
        elif any(met_any[i + 1 :]):
            assert name == "between"
        else:
            assert name == "after"


@given(actions)
def test_the_same_faults_make_one_window_named_in_one_order(steps):
    history, _ = play(steps)
    names = {name for name, _ in windows(history.operations())}
    fault_windows = [n.split(" + ") for n in names if n not in ("before", "between", "after")]
    sets = [frozenset(w) for w in fault_windows]
    assert len(sets) == len(set(sets))
    # One order of the faults for every window they share.
    for window in fault_windows:
        for other in fault_windows:
            shared = [f for f in window if f in other]
            assert shared == [f for f in other if f in window]


@given(actions)
def test_availability_counts_every_operation_once_and_names_each_during(steps):
    history, truth = play(steps)
    result = availability(history.events)
    figures = result.figures
    counted = sum(
        int(value) for name, value in figures.items() if name.endswith(("_ok", "_fail", "_info"))
    )
    assert counted == len(truth)
    order = [name for name, _ in windows(history.operations())]
    during = list(dict.fromkeys(n for n in order if n not in ("before", "between", "after")))
    for k, name in enumerate(during, 1):
        assert figures[f"during{k}_faults"] == name
    assert f"during{len(during) + 1}_faults" not in figures


def test_an_operation_that_met_a_fault_being_applied_met_that_fault():
    """Through the timeline: events recorded while the fault was being applied carry
    its name once it is applied, not a pseudo-fault of their own."""
    from types import SimpleNamespace

    from pytest_chaos import timeline

    timeline.begin("test_windows")
    try:
        history = timeline.history()
        assert history is not None
        early, late = history.client(), history.client()
        early.invoke("write", 0)
        with timeline.applying("partition") as being_applied:
            early.ok(None)  # completed while the fault was being applied
            late.invoke("write", 1)
            handle = SimpleNamespace(kind="partition", target="api", lifted_at=None)
            timeline.note_fault("partition api", handle)
            being_applied.label = "partition api"
        late.ok(None)
        handle.lifted_at = 1.0
        names = [name for name, _ in windows(history.operations())]
    finally:
        timeline.end()
    assert names == ["partition api", "partition api"]
    assert all("applying" not in f for op in history.events for f in op.faults)
