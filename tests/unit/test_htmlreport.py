"""The HTML report's timeline picture and page, from timeline data made up here (the
plugin test drives the whole path through pytester; the experiments' pictures were
checked by eye)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from pytest_chaos.htmlreport import LEFT, RIGHT, WIDTH, render, svg_timeline, write

TIMELINE = {
    "nodeid": "test_x.py::test_partition",
    "faults": [
        {"label": "partition api", "kind": "partition", "target": "api", "start": 2.0, "end": 6.0}
    ],
    "recoveries": [{"what": "orders again", "start": 6.0, "end": 7.5, "seconds": 1.5}],
    "requests": [
        {"flow": "orders", "t": 0.0, "latency_ms": 8.0, "ok": True, "status": 201, "error": None},
        {"flow": "orders", "t": 3.0, "latency_ms": 2000.0, "ok": False, "status": 503,
         "error": "database_unavailable"},
        {"flow": "market", "t": 4.0, "latency_ms": 3.0, "ok": True, "status": 200, "error": None},
        {"flow": "orders", "t": 5.0, "latency_ms": 4000.0, "ok": False, "status": None,
         "error": "ReadTimeout"},
        {"flow": "orders", "t": 10.0, "latency_ms": 9.0, "ok": True, "status": 201, "error": None},
    ],
    "events": [{"t": 2.5, "kind": "oom_victim", "label": "api (42)"}],
}  # fmt: skip


def x_of(t: float, t_min: float = 0.0, t_max: float = 10.009) -> float:
    return LEFT + (t - t_min) / (t_max - t_min) * (WIDTH - LEFT - RIGHT)


def test_the_picture_shades_the_fault_and_marks_failures_recovery_and_kernel_events():
    svg = svg_timeline(TIMELINE)
    root = ET.fromstring(svg)  # well-formed  # noqa: S314 - made here
    ns = "{http://www.w3.org/2000/svg}"
    fault = root.find(f"{ns}rect[@class='fault']")
    assert fault is not None
    x0, width = float(fault.get("x", "0")), float(fault.get("width", "0"))
    # The window spans t = 2..6 s of a 0..10.009 s axis (the last request ends then).
    assert abs(x0 - x_of(2.0)) < 1
    assert abs(x0 + width - x_of(6.0)) < 1
    assert len(root.findall(f"{ns}path[@class='failed']")) == 2
    assert len(root.findall(f"{ns}circle[@class='ok']")) == 3
    recovery = root.find(f"{ns}line[@class='recovery']")
    assert recovery is not None
    assert abs(float(recovery.get("x1", "0")) - x_of(7.5)) < 1
    assert len(root.findall(f"{ns}path[@class='event']")) == 1
    text = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "partition api (4.0 s)" in text
    assert "orders again: 1.50 s" in text
    assert "oom_victim api (42)" in text
    assert "database_unavailable" in svg  # a failed request's tooltip says why


def test_a_test_without_requests_still_gets_a_picture_that_says_so():
    svg = svg_timeline({"faults": [], "recoveries": [], "requests": [], "events": []})
    assert "no requests were sent" in svg


def test_the_page_and_its_json_carry_the_same_tests(tmp_path):
    tests = [
        {
            "nodeid": "test_x.py::test_partition",
            "outcome": "failed",
            "duration_s": 12.5,
            "message": "AssertionError: a request took 6.2 s <slow>",
            "figures": {"experiment": "02", "recovery_time_s": "1.5", "orders_lost": "0"},
            "timeline": TIMELINE,
        }
    ]
    run = {"started": "2026-11-27 19:00:00 UTC", "header": ["pytest-chaos: backend x"],
           "summary": "1 failed"}  # fmt: skip
    page = write(tmp_path / "report", run, tests)
    html = page.read_text()
    assert html.count("<svg") == 1
    assert "a request took 6.2 s &lt;slow&gt;" in html  # escaped
    assert re.search(r"<td class='failed'>FAILED</td>", html)
    assert "href='#t-test-x-py--test-partition'" in html
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["tests"][0]["timeline"]["requests"][1]["error"] == "database_unavailable"
    assert render(run, tests) == html


def test_the_fault_window_ends_when_lifted_and_the_wait_for_health_is_drawn_apart():
    """A pause of a service whose health check runs every 10 s: requests are back when
    it is thawed (3 s), the undo waits 10 s more for a passing probe."""
    from pytest_chaos.faults.base import FaultHandle
    from pytest_chaos.timeline import Timeline

    timeline = Timeline("t.py::test_pause", start=100.0)
    handle = FaultHandle("pause", "db", applied_at=101.0)
    handle.lifted_at, handle.undone_at = 104.0, 114.0
    timeline.faults.append(_fault_of(handle))
    [fault] = timeline.to_json()["faults"]
    assert (fault["start"], fault["end"], fault["healthy"]) == (1.0, 4.0, 14.0)
    assert handle.figures()["in_force_s"] == 3.0
    assert handle.figures()["health_wait_s"] == 10.0
    root = ET.fromstring(svg_timeline({**TIMELINE, "faults": [fault]}))  # noqa: S314 - made here
    ns = "{http://www.w3.org/2000/svg}"
    window = root.find(f"{ns}rect[@class='fault']")
    wait = root.find(f"{ns}rect[@class='health-wait']")
    assert wait is not None
    edge = float(window.get("x")) + float(window.get("width"))
    assert abs(float(wait.get("x")) - edge) < 0.2  # coordinates are written to 0.1


def _fault_of(handle):
    from pytest_chaos.timeline import _Fault

    return _Fault(handle.describe(), handle.kind, handle.target, handle.applied_at, handle)
