"""Did the fault bite, and whose failure is it? The verdict a test gets, against
generated outcomes, exceptions and fault evidence whose answer is known: a pass only
where every fault took effect (or the test said effect was optional); an error of the
tool is an error, never a failure of the system; a fault that did not bite is "no
effect", carrying its evidence, whether the test passed or failed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos.errors import (
    ConfigurationError,
    DataLossDetected,
    DockerUnavailable,
    FaultDidNotTakeEffect,
    FaultError,
    RecoveryTimeout,
    UnknownService,
)
from pytest_chaos.faults.base import Effect
from pytest_chaos.verdicts import ERROR, NO_EFFECT, judge_effect

#: What a test can end with, and whether it judges the system (True), is an error of
#: the tool (False) or of the test itself (None).
RAISED = {
    "nothing": (None, None),
    "assertion": (AssertionError("p99 too high"), True),
    "recovery": (RecoveryTimeout("never came back"), True),
    "data loss": (DataLossDetected("3 acknowledged orders missing"), True),
    "client error": (ConnectionError("the system's client failed"), True),
    "bad argument": (ConfigurationError("rate must be positive"), False),
    "unknown service": (UnknownService("no service 'x'"), False),
    "docker refused": (FaultError("Docker refused to pause"), False),
    "no docker": (DockerUnavailable("no engine"), False),
}


def report_for(raised):
    outcome = "passed" if raised is None else "failed"
    report = pytest.TestReport(
        "t.py::test_x", ("t.py", 1, "test_x"), {}, outcome, None if raised is None else "E", "call"
    )
    excinfo = None if raised is None else SimpleNamespace(value=raised)
    return report, excinfo


@given(
    st.sampled_from(sorted(RAISED)),
    st.lists(st.sampled_from([True, False]), max_size=4),
    st.booleans(),
)
def test_a_pass_needs_every_fault_to_have_bitten_and_errors_are_the_tools(ending, bites, optional):
    raised, judges_system = RAISED[ending]
    effects = [(f"fault {i}", Effect(took, f"evidence {i}")) for i, took in enumerate(bites)]
    session = SimpleNamespace(without_effect=lambda: [(n, e) for n, e in effects if not e.took])
    report, excinfo = report_for(raised)
    judge_effect(report, session, excinfo, optional=True if optional else None)
    verdict = getattr(report, "chaos_verdict", None)
    missing = [n for n, e in effects if not e.took]
    if judges_system is False:
        assert verdict == ERROR
        return
    if missing and not optional and (raised is None or judges_system):
        assert verdict == NO_EFFECT
        assert report.outcome == "failed"
        for name in missing:
            assert name in report.longrepr
        return
    assert verdict is None
    if report.outcome == "passed":
        assert not missing or optional


@given(st.sampled_from(sorted(RAISED)), st.booleans())
def test_a_fault_that_said_it_did_not_bite_is_no_effect_whatever_else(ending, optional):
    raised = FaultDidNotTakeEffect("the quota never bound: 12% of periods throttled")
    report, excinfo = report_for(raised)
    session = SimpleNamespace(without_effect=list)
    judge_effect(report, session, excinfo, optional=True if optional else None)
    assert report.chaos_verdict == NO_EFFECT
    assert "the quota never bound" in report.longrepr


def test_a_skipped_test_has_no_verdict():
    report = pytest.TestReport("t.py::test_x", ("t.py", 1, "test_x"), {}, "skipped", None, "call")
    judge_effect(report, SimpleNamespace(without_effect=lambda: [("f", Effect(False, "e"))]), None)
    assert getattr(report, "chaos_verdict", None) is None
