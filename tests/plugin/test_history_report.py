"""The test's history through the plugin: one history per test for all its load
generators and final reads, written to the report directory with its Elle export,
summarised per fault window in report.json and on the page, and judged by
``chaos.check``, whose figures land in JUnit and whose failure fails the test."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_chaos import read_jsonl

SERVER = """
import contextlib, itertools, json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from pytest_chaos import Flow, Request

STORED, BROKEN, IDS = [], threading.Event(), itertools.count(1)

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if BROKEN.is_set():
            self.send_response(503)
            self.end_headers()
            return
        STORED.append(body["key"])
        out = json.dumps({"id": next(IDS)}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass

@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()

def adds(url):
    return Flow("adds", 50, lambda n: Request("POST", url, {"key": f"k{n}"}),
                ack=lambda r: r.json()["id"] if r.status_code == 201 else None,
                operation=lambda n, req: ("add", req.json["key"]))

@contextlib.contextmanager
def outage():
    BROKEN.set()
    try:
        yield "outage"
    finally:
        BROKEN.clear()
"""

TEST = """
import time
from pytest_chaos import LoadGenerator, availability, set_full, unique_ids
from server import STORED, adds, outage

def test_set(chaos, server, lose):
    with LoadGenerator([adds(server)], request_timeout=2) as load:
        load.wait_for_records("adds", 10)
        chaos.inject(outage(), label="outage of the server")
        seen = len(load.records())
        load.wait_for_records("adds", seen + 10)
        chaos.undo_all()
        seen = len(load.records())
        load.wait_for_records("adds", seen + 10)
    assert load.history is chaos.history
    reader = chaos.history.client()
    reader.invoke("read")
    reader.ok(STORED[1:] if lose else list(STORED))
    chaos.check(set_full(chaos.history), unique_ids(chaos.history, f="add"),
                availability(chaos.history))
"""


@pytest.fixture
def project(pytester):
    pytester.makepyfile(server=SERVER, test_set=TEST)
    pytester.makeconftest(
        "import pytest\nfrom server import server  # noqa: F401\n\n"
        "@pytest.fixture\ndef lose(request):\n    return request.config.getoption('--lose')\n\n"
        "def pytest_addoption(parser):\n    parser.addoption('--lose', action='store_true')\n"
    )
    return pytester


def test_the_history_is_written_summarised_and_judged(project):
    result = project.runpytest_subprocess("--chaos-report=out", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    out = project.path / "out"
    data = json.loads((out / "report.json").read_text())
    (test,) = data["tests"]
    history, files = test["timeline"]["history"], test["timeline"]["evidence"]
    assert files["history"] == "evidence/test_set.py--test_set/history.jsonl"
    assert files["elle"] == "evidence/test_set.py--test_set/history.elle.json"
    events = read_jsonl(out / files["history"])
    assert history["operations"] == len(events) // 2 > 30
    windows = {w["window"]: w for w in history["windows"]}
    # An add in flight while the outage was being applied met it (no pseudo-fault
    # "applying ..."); none that met it is "before".
    assert set(windows) == {"before", "outage of the server", "after"}
    assert windows["outage of the server"]["fail"] >= 5  # the 503s, stated refusals
    assert windows["before"]["fail"] == windows["after"]["fail"] == 0, windows
    assert windows["before"]["ok"] >= 10
    elle = [json.loads(line) for line in (out / files["elle"]).read_text().splitlines()]
    assert [e["index"] for e in elle] == [e.index for e in events]
    assert {"type", "f", "value", "process", "time"} <= set(elle[0])
    page = (out / "index.html").read_text()
    assert "Elle export" in page
    assert "outage of the server" in page
    junit = ET.parse(  # noqa: S314 - the inner run's own file
        project.path / "junit.xml"
    ).getroot()
    props = {p.get("name", "").split("::")[-1]: p.get("value") for p in junit.iter("property")}
    assert props["set_full_valid"] == "true"
    assert props["set_full_lost"] == "0"
    assert props["unique_ids_duplicates"] == "0"
    assert int(props["availability_during1_fail"]) >= 5
    assert props["availability_during1_faults"] == "outage of the server"
    # What the generator offered and sent, per window: all of it, at its 50/s.
    assert props["load_during1_faults"] == "outage of the server"
    assert int(props["load_adds_offered"]) > 30
    assert props["load_adds_not_sent"] == "0"
    for window in ("before", "during1", "after"):
        offered = float(props[f"load_adds_{window}_offered_per_s"])
        assert float(props[f"load_adds_{window}_sent_per_s"]) == offered


def test_a_lost_write_fails_the_test_naming_it(project):
    result = project.runpytest_subprocess("--lose", "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*HistoryCheckFailed: the set-full check failed: 1 acknowledged element(s) lost: 'k0'*"]
    )
    junit = ET.parse(  # noqa: S314 - the inner run's own file
        project.path / "junit.xml"
    ).getroot()
    props = {p.get("name", "").split("::")[-1]: p.get("value") for p in junit.iter("property")}
    assert props["set_full_valid"] == "false"
    assert props["set_full_lost"] == "1"
