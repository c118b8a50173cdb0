"""An interrupted run (Ctrl-C, SIGTERM) while requests hang: every fault is lifted
within a second of the signal, whatever the load generator is waiting for; the live
line shows the hung requests; and the test is reported as interrupted everywhere
(terminal, JUnit, report.json), never as passed. The server here is real (a socket
on loopback that accepts and never answers); the fault is one of the test's own,
whose undo notes the time (real faults under interruption: tests/integration)."""

from __future__ import annotations

import json
import signal
import threading
import time
import xml.etree.ElementTree as ET

import pytest

INNER = """
import contextlib, pathlib, socket, threading, time
import pytest
from pytest_chaos import Flow, LoadGenerator, Request

HERE = pathlib.Path(__file__).parent

@contextlib.contextmanager
def noted_fault():
    try:
        yield "partition"
    finally:
        (HERE / "undone-at").write_text(repr(time.time()))

def hanging_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    held = []
    def accept():
        while True:
            held.append(server.accept()[0])  # accepted, never answered
    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]

@pytest.fixture
def slow_setup():
    time.sleep(2)  # a setup that takes time (a stack starting): JUnit counts it once

def test_hung(chaos, slow_setup):
    port = hanging_server()
    flow = Flow("reads", 20, lambda i: Request("GET", f"http://127.0.0.1:{port}/"))
    with LoadGenerator([flow], request_timeout=60) as load:
        chaos.inject(noted_fault(), label="partition of the hanging server")
        chaos.record("figure_before_the_signal", 7)
        deadline = time.monotonic() + 30
        while len(load.in_flight()) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (HERE / "hanging").write_text("yes")
        time.sleep(120)  # the experiment's dwell; the signal comes during it
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interruption_with_hung_requests_heals_within_a_second_and_says_so(
    pytester, record_property, sig, inner_pytest
):
    pytester.makepyfile(test_inner=INNER)
    proc = inner_pytest.start(
        pytester.path,
        "--chaos-live-interval=0.5",
        "--junitxml=junit.xml",
        "--chaos-report=out",
        f"--chaos-journal={pytester.path / 'journal'}",
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def live_line_shows_hung_requests() -> bool:
        return (pytester.path / "hanging").exists() and any(
            "in flight (oldest" in line for line in list(lines)
        )

    inner_pytest.wait(
        proc, live_line_shows_hung_requests, what="hung requests", timeout=60, interval=0.02,
        output=lambda: "".join(lines),
    )  # fmt: skip
    sent = time.time()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    reader.join(10)
    proc.stdout.close()
    out = "".join(lines)
    healed_s = float((pytester.path / "undone-at").read_text()) - sent
    record_property("healed_s", round(healed_s, 3))
    # The bound: one second, whatever the hung requests wait for (60 s here).
    assert healed_s < 1.0, out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out

    name = signal.Signals(sig).name
    assert f"pytest-chaos: interrupted by {name}" in out
    assert "pytest-chaos: lifted 1 fault(s)" in out
    assert "stopped 1 load generator(s)" in out
    assert "INTERRUPTED" in out
    assert "PASSED" not in out

    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")  # noqa: S314 - ours
    assert (suite.get("tests"), suite.get("errors")) == ("1", "1"), ET.tostring(suite)
    [case] = suite.findall("testcase")
    assert case.get("name") == "test_hung"
    assert 2.0 < float(case.get("time")) <= float(suite.get("time")), ET.tostring(suite)
    error = case.find("error")
    assert error is not None
    assert error.get("message") == f"pytest-chaos: interrupted by {name}"
    assert "partition of the hanging server" in error.text
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["figure_before_the_signal"] == "7"
    assert properties["chaos_fault_1"] == "partition of the hanging server"

    [test] = json.loads((pytester.path / "out" / "report.json").read_text())["tests"]
    assert test["outcome"] == "interrupted"
    assert test["duration_s"] > 1.0
    assert test["figures"]["figure_before_the_signal"] == "7"
    assert f"interrupted by {name}" in test["message"]


def test_pytest_exit_during_a_fault_undoes_it_and_reports_the_test_as_interrupted(pytester):
    pytester.makepyfile(
        test_inner="""
        import contextlib, pathlib, pytest

        @contextlib.contextmanager
        def noted_fault():
            try:
                yield "flag"
            finally:
                (pathlib.Path(__file__).parent / "undone").write_text("yes")

        def test_stops_the_run(chaos):
            chaos.inject(noted_fault(), label="the flag")
            pytest.exit("enough")
        """
    )
    result = pytester.runpytest_subprocess("--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert (pytester.path / "undone").read_text() == "yes"
    result.stdout.fnmatch_lines(
        ["pytest-chaos: interrupted by pytest.exit: enough", "pytest-chaos: lifted 1 fault(s)*"]
    )
    xml = (pytester.path / "junit.xml").read_text()
    assert '<error message="pytest-chaos: interrupted by pytest.exit: enough"' in xml


@pytest.mark.parametrize(
    ("inner", "args", "stopped"),
    [
        (
            {"test_good": "def test_x(chaos):\n    pass\n", "test_broken": "def broken(:\n"},
            [],
            "1 error during collection",
        ),
        (
            {
                "test_inner": "def test_a(chaos):\n    assert False\n\n"
                "def test_b(chaos):\n    pass\n"
            },
            ["-x"],
            "1 failed",
        ),
    ],
    ids=["collection-error", "maxfail"],
)
def test_pytest_stopping_by_itself_between_tests_is_not_called_an_interruption(
    pytester, inner, args, stopped
):
    """A collection error or --maxfail makes pytest stop itself (it raises its
    Interrupted between tests, with no fault in force): once reported as 'interrupted
    by pytest.exit: 1 error during collection', as if a fault had been cut short."""
    pytester.makepyfile(**inner)
    result = pytester.runpytest_subprocess(*args)
    assert "pytest-chaos: interrupted" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*{stopped}*"])
