"""What an interruption (Ctrl-C, SIGTERM) does: lift every fault in force at once,
then stop the load generators, then wait for the targets' health; and report the
test that was running as interrupted, naming the signal and what was undone, in
every report (terminal, JUnit, the JSON and HTML report)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from . import signals
from .errors import ChaosError
from .waits import PutOff

if TYPE_CHECKING:
    import pytest

    from .chaos import Chaos


def interrupted(session: Chaos | None, cause: str | None = None) -> str:
    """Undo ``session``'s faults, stop the load generators, and say what was done
    (the first line names the signal, or ``cause``)."""
    name, at = signals.received or ("KeyboardInterrupt", time.monotonic())
    if cause is not None and signals.received is None:
        name = cause
    undone: list[str] = []
    failed = ""
    put_off = PutOff("the interruption")
    if session is not None:
        try:
            undone = session.undo_all(put_off)
        except ChaosError as exc:
            failed = str(exc)
        except KeyboardInterrupt:
            failed = "a second interruption stopped the undo"
    lifted_s = time.monotonic() - at
    cancelled = 0
    if "pytest_chaos.observe.load" in sys.modules:  # no load generator was ever imported
        from .observe import load

        cancelled = load.abort_all(wait=1.0)
    waited = put_off.run()
    lines = [f"pytest-chaos: interrupted by {name}"]
    if undone:
        lines.append(
            f"pytest-chaos: lifted {len(undone)} fault(s) {lifted_s:.2f} s after the signal: "
            + "; ".join(undone)
        )
    elif session is not None and not failed:
        lines.append("pytest-chaos: no fault was in force")
    if failed:
        lines.append(f"pytest-chaos: {failed}")
    if cancelled:
        lines.append(
            f"pytest-chaos: stopped {cancelled} load generator(s), their requests cancelled"
        )
    lines += [f"pytest-chaos: after the interruption, {line}" for line in waited]
    return "\n".join(lines)


def report_interrupted(item: pytest.Item, message: str, duration: float) -> None:
    """Log a report saying the test was interrupted: an error in the terminal and in
    JUnit (with the figures recorded so far), ``interrupted`` in our reports."""
    import pytest

    report = pytest.TestReport(
        item.nodeid,
        item.location,
        dict.fromkeys(item.keywords, 1),
        "failed",
        message,
        "call",
        duration=duration,
        user_properties=list(item.user_properties),
        chaos_verdict="interrupted",
    )
    item.ihook.pytest_runtest_logreport(report=report)


def junit_error(config: pytest.Config, report: pytest.TestReport) -> None:
    """Make the element pytest's JUnit writer made of ``report`` an <error> carrying
    its first line as the message (pytest writes a call's failure as <failure>)."""
    from _pytest.junitxml import xml_key  # pytest exports no public handle on its writer

    xml: Any = config.stash.get(xml_key, None)
    if xml is None:
        return
    nodes = xml.node_reporter(report).nodes
    if not nodes or nodes[-1].tag not in ("failure", "error"):
        return
    node = nodes[-1]
    if node.tag == "failure":
        node.tag = "error"
        xml.stats["failure"] -= 1
        xml.stats["error"] += 1
    node.set("message", report.longreprtext.splitlines()[0] if report.longreprtext else "")
    if getattr(report, "chaos_verdict", None) == "interrupted":
        # A report made after the test's own: its figures go into the same element.
        reporter = xml.node_reporter(report)
        for name, value in report.user_properties:
            reporter.add_property(name, str(value))
