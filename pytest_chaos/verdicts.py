"""Did the fault bite, and is a failure the system's? A test passes only if the
system held up under a fault that took effect. Where a fault's own evidence says it
did not (no packet dropped, no period throttled, the process still alive), or the
test raised FaultDidNotTakeEffect, the verdict is "no effect": an error carrying the
evidence, in every report, never a pass, and never a failure of the system either.
A test ended by an error of the tool (a fault Docker refused, a bad argument, a
target that could not be proved) is an "error", not a failure of the system."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ChaosError, DataLossDetected, FaultDidNotTakeEffect, RecoveryTimeout

if TYPE_CHECKING:
    import pytest

    from .chaos import Chaos

NO_EFFECT = "no effect"
#: The verdict of a test that an error of the tool ended (not of the system).
ERROR = "error"


def judge_effect(
    report: pytest.TestReport, session: Chaos, excinfo: Any, *, optional: object = None
) -> None:
    """Turn ``report`` (a test's call) into the "no effect" verdict when a fault it
    applied did not take effect; each fault's evidence is recorded as figures."""
    if report.skipped and not hasattr(report, "wasxfail"):
        return  # skipped: there is no verdict to judge
    raised = excinfo.value if excinfo is not None else None
    if report.failed and is_tool_error(raised):
        # Not a verdict on the system: a fault that could not be applied, a bad
        # argument, an engine that refused. An error, in every report.
        report.chaos_verdict = ERROR  # type: ignore[attr-defined]
        return
    if isinstance(raised, FaultDidNotTakeEffect):
        reason = str(raised)
    else:
        if optional is not None:
            return
        if report.failed and not _a_verdict_on_the_system(raised):
            return  # an error of the test or of a fault: reported as it is
        missing = session.without_effect()
        if not missing:
            return
        reason = "; ".join(f"{label}: {effect.evidence}" for label, effect in missing)
    lines = [f"the fault did not take effect: {reason}"]
    if report.failed and not isinstance(raised, FaultDidNotTakeEffect):
        lines += [
            "",
            "The test failed as well, but under a fault that did not bite its failure says "
            "nothing about the system. It said:",
            report.longreprtext,
        ]
    report.outcome = "failed"
    report.longrepr = "\n".join(lines)
    report.chaos_verdict = NO_EFFECT  # type: ignore[attr-defined]
    if hasattr(report, "wasxfail"):
        del report.wasxfail  # an expected failure under no fault is not one either


def is_tool_error(raised: BaseException | None) -> bool:
    """Whether a test's exception is an error of the tool, its arguments or the engine
    (a ChaosError that judges nothing: not a failed assertion, a recovery that did not
    come or lost data, and not a fault without effect, which has its own verdict)."""
    return isinstance(raised, ChaosError) and not isinstance(
        raised, AssertionError | RecoveryTimeout | FaultDidNotTakeEffect
    )


def _a_verdict_on_the_system(raised: BaseException | None) -> bool:
    """Whether a failure judges the system (an assertion, a recovery that did not
    come, lost data, an error from the system's client) rather than the test's own
    setup or a fault that could not be applied."""
    if raised is None:
        return False
    if isinstance(raised, RecoveryTimeout | DataLossDetected):
        return True
    return not isinstance(raised, ChaosError)
