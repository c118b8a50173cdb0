"""A test that an error of the tool ended (a fault Docker refused, a bad argument) is
an error in every report, never a failure of the system; a failed assertion or a
checker's verdict stays a failure."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

REFUSING_FAULT = '''
import contextlib
import docker.errors
import requests
from pytest_chaos import FaultHandle, fault

@fault("freeze_refused")
@contextlib.contextmanager
def freeze_refused(chaos, service):
    """A pause the engine refuses, as Docker did once right after a stack's start."""
    response = requests.Response()
    response.status_code = 500
    raise docker.errors.APIError(
        "500 Server Error", response=response,
        explanation="OCI runtime pause failed: unable to freeze: unknown",
    )
    yield FaultHandle(kind="freeze", target=service)
'''

TESTS = """
import pytest
from pytest_chaos import HistoryCheckFailed

def test_refused(chaos):
    chaos.freeze_refused("web")

def test_bad_argument(chaos):
    chaos.kill("web", "SIGNOPE")

def test_system_failed(chaos):
    assert 1 + 1 == 3, "the system's own criterion"

def test_checker_failed(chaos):
    raise HistoryCheckFailed("set-full: 2 acknowledged elements lost")
"""


def test_tool_errors_are_errors_and_system_failures_stay_failures(pytester):
    pytester.makeconftest(REFUSING_FAULT)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(
        f"--chaos-journal={pytester.path / 'journal'}",
        f"--junitxml={pytester.path / 'junit.xml'}",
        f"--chaos-report={pytester.path / 'report'}",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        ["*Docker refused to apply freeze_refused: OCI runtime pause failed*not a verdict*"]
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 2, result.stdout.str()
    assert outcomes.get("errors") == 2, result.stdout.str()
    junit = ET.parse(pytester.path / "junit.xml")  # noqa: S314 - the inner run's own file
    cases = {c.get("name"): c for c in junit.getroot().iter("testcase")}
    for name in ("test_refused", "test_bad_argument"):
        assert cases[name].find("error") is not None, name
        assert cases[name].find("failure") is None, name
    for name in ("test_system_failed", "test_checker_failed"):
        assert cases[name].find("failure") is not None, name
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    outcome = {t["nodeid"].split("::")[-1]: t["outcome"] for t in report["tests"]}
    assert outcome == {
        "test_refused": "error",
        "test_bad_argument": "error",
        "test_system_failed": "failed",
        "test_checker_failed": "failed",
    }
