"""The load generator's history, against a real HTTP server on loopback: each
request is an operation whose outcome says whether it happened, and each event
carries the faults in force."""

import itertools
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pytest_chaos import Flow, LoadGenerator, Request, set_full, timeline
from pytest_chaos.faults.base import FaultHandle
from pytest_chaos.observe.load import outcome_of

IDS = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    mode = "ok"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if Handler.mode == "hang":
            time.sleep(1.0)
        status = {"ok": 201, "refuse": 503, "hang": 201, "crash": 500}[Handler.mode]
        body = json.dumps({"id": next(IDS)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/orders"
    httpd.shutdown()
    httpd.server_close()
    Handler.mode = "ok"


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/orders"  # nothing listens there now


def orders(url):
    return Flow(
        "orders", 40, lambda n: Request("POST", url, {"client_order_id": f"c{n}"}),
        ack=lambda r: r.json()["id"] if r.status_code == 201 else None,
        operation=lambda n, req: ("add", req.json["client_order_id"]),
    )  # fmt: skip


def run(flow, mode, count, timeout=0.5):
    Handler.mode = mode
    with LoadGenerator([flow], request_timeout=timeout) as load:
        load.wait_for_records("orders", count, timeout=10)
    return load


@pytest.mark.parametrize(
    ("mode", "outcome"), [("ok", "ok"), ("refuse", "fail"), ("crash", "info"), ("hang", "info")]
)
def test_each_request_is_an_operation_whose_outcome_says_whether_it_happened(server, mode, outcome):
    load = run(orders(server), mode, 3)
    ops = load.history.operations()
    assert len(ops) == len(load.records())
    assert {op.type for op in ops} == {outcome}
    assert all(op.f == "add" and op.invoke.value.startswith("c") for op in ops)
    if outcome == "ok":
        assert [op.value for op in ops] == [r.ack_id for r in load.records()]
    else:
        assert all(op.completion.error for op in ops)


def test_a_request_that_never_left_failed():
    load = run(orders(closed_port_url()), "ok", 3)
    assert {op.type for op in load.history.operations()} == {"fail"}
    assert all("ConnectError" in op.completion.error for op in load.history.operations())


def test_no_process_has_two_operations_open_and_info_retires_a_process(server):
    load = run(orders(server), "hang", 6, timeout=0.2)
    processes = [op.invoke.process for op in load.history.operations()]
    assert len(set(processes)) == len(processes)  # each hung client was retired
    load.history.operations()  # pairing checks one open operation per process


def test_events_carry_the_faults_in_force(server):
    timeline.begin("test")
    try:
        Handler.mode = "ok"
        with LoadGenerator([orders(server)], request_timeout=1) as load:
            load.wait_for_records("orders", 3, timeout=10)
            handle = FaultHandle("partition", "api")
            timeline.note_fault("partition api", handle)
            seen = len(load.records())
            load.wait_for_records("orders", seen + 3, timeout=10)
            handle.lifted_at = time.monotonic()
            seen = len(load.records())
            load.wait_for_records("orders", seen + 3, timeout=10)
    finally:
        timeline.end()
    names = [op.invoke.faults for op in load.history.operations()]
    assert names[0] == ()
    assert ("partition api",) in names
    assert names[-1] == ()
    assert set_full(final_read(load)).valid


def final_read(load):
    """The final read: what the server stored (here: every acknowledged order)."""
    reader = load.history.client()
    reader.invoke("read")
    reader.ok([op.invoke.value for op in load.history.operations() if op.type == "ok"])
    return load.history.events


def test_the_default_outcomes():
    def response(status):
        return httpx.Response(status)

    assert outcome_of(response(200), None) == "ok"
    assert outcome_of(response(409), None) == "fail"
    assert outcome_of(response(503), None) == "fail"
    assert outcome_of(response(504), None) == "info"
    assert outcome_of(None, httpx.ConnectError("refused")) == "fail"
    assert outcome_of(None, httpx.PoolTimeout("busy")) == "fail"
    assert outcome_of(None, httpx.ReadTimeout("slow")) == "info"
    assert outcome_of(None, httpx.RemoteProtocolError("reset")) == "info"
