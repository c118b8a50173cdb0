"""The JUnit XML in both modes, checked against the Jenkins xunit plugin's
junit-10.xsd (scripts/setup fetches it; CHAOS_JUNIT_XSD names another copy).

Default mode: figures are testcase properties (what junit2html, xunit-viewer,
junitparser and Allure read), so the file is junit-10 plus exactly those and xunit1's
file/line attributes. Strict mode (--chaos-junit-strict): valid as it is, with every
figure kept as a testsuite property named '<test id>::<figure>'.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SCHEMA = Path(os.environ.get("CHAOS_JUNIT_XSD", "/var/lib/pytest-chaos/junit-10.xsd"))

TESTS = """
import pytest

@pytest.mark.experiment("02")
def test_pass(chaos):
    chaos.record("recovery_time_s", 1.25)
    chaos.record("orders_lost", 0)
    chaos.record("note", 'quotes " and <angles> & ampersands')

def test_fail(chaos):
    chaos.record("slowest_answer_s", 7.5)
    assert False, "a request hung"

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_error(broken):
    pass

def test_skip():
    pytest.skip("needs netem")

def test_plain():
    pass
"""


@pytest.fixture(scope="module")
def schema():
    import xmlschema

    if not SCHEMA.is_file():
        pytest.fail(f"{SCHEMA} is missing: scripts/setup fetches it (or set CHAOS_JUNIT_XSD).")
    return xmlschema.XMLSchema(str(SCHEMA))


def run(pytester, *args: str) -> ET.Element:
    pytester.makepyfile(test_report=TESTS)
    result = pytester.runpytest_subprocess("--junitxml=out.xml", *args)
    result.assert_outcomes(passed=2, failed=1, errors=1, skipped=1)
    return ET.parse(pytester.path / "out.xml").getroot()  # noqa: S314 - pytest wrote it


def properties(element: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in element.findall("properties/property")}


def case_named(root: ET.Element, name: str) -> ET.Element:
    found = root.find(f".//testcase[@name='{name}']")
    assert found is not None, name
    return found


def test_strict_mode_is_valid_junit_10_and_keeps_every_figure_on_the_suite(pytester, schema):
    root = run(pytester, "--chaos-junit-strict")
    schema.validate(root)  # raises, naming the element, if not valid
    assert root.findall(".//testcase/properties") == []
    suite = root.find("testsuite")
    assert suite is not None
    figures = properties(suite)
    assert figures["test_report.py::test_pass::experiment"] == "02"
    assert figures["test_report.py::test_pass::recovery_time_s"] == "1.25"
    assert figures["test_report.py::test_pass::orders_lost"] == "0"
    assert figures["test_report.py::test_pass::note"] == 'quotes " and <angles> & ampersands'
    assert figures["test_report.py::test_fail::slowest_answer_s"] == "7.5"
    assert case_named(root, "test_fail").find("failure") is not None


def test_default_mode_is_junit_10_plus_testcase_properties(pytester, schema):
    root = run(pytester)
    assert not schema.is_valid(root)  # testcase properties are not in junit-10
    assert properties(case_named(root, "test_pass")) == {
        "experiment": "02",
        "recovery_time_s": "1.25",
        "orders_lost": "0",
        "note": 'quotes " and <angles> & ampersands',
    }
    assert properties(case_named(root, "test_fail")) == {"slowest_answer_s": "7.5"}
    # Without exactly those (and xunit1's file and line attributes), it is valid.
    for case in root.iter("testcase"):
        for extra in case.findall("properties"):
            case.remove(extra)
        case.attrib.pop("file", None)
        case.attrib.pop("line", None)
    schema.validate(root)


def test_strict_mode_without_junitxml_changes_nothing(pytester):
    pytester.makepyfile("def test_x(chaos):\n    chaos.record('x', 1)\n")
    result = pytester.runpytest_subprocess("--chaos-junit-strict")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos figures*", "*x = 1*"])
