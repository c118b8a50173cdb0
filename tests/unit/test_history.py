import json
import threading

import pytest

from pytest_chaos import ConfigurationError, History, Op, export_elle, read_jsonl
from pytest_chaos.observe.history import pair, windows


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_operation_is_an_invoke_then_its_completion_with_the_faults_in_force():
    clock, faults = Clock(), []
    history = History(faults=lambda: faults, clock=clock)
    client = history.client()
    client.invoke("add", 1)
    clock.now += 0.25
    faults.append("partition trading-api | postgres")
    client.ok()
    [op] = history.operations()
    assert (op.f, op.type, op.value, op.latency) == ("add", "ok", 1, 0.25)
    assert op.invoke.faults == ()
    assert op.completion is not None
    assert op.completion.faults == ("partition trading-api | postgres",)
    assert [e.index for e in history.events] == [0, 1]


def test_a_client_whose_operation_ended_info_takes_a_new_process():
    history = History()
    one, two = history.client(), history.client()
    assert (one.process, two.process) == (0, 1)
    one.invoke("add", 1)
    one.info("timed out after 5 s")
    one.invoke("add", 2)
    one.ok()
    assert one.process == 2
    assert [(e.process, e.type) for e in history.events] == [
        (0, "invoke"), (0, "info"), (2, "invoke"), (2, "ok"),
    ]  # fmt: skip
    assert history.events[1].error == "timed out after 5 s"


def test_a_client_cannot_have_two_operations_open_or_complete_one_it_never_invoked():
    client = History().client()
    with pytest.raises(ConfigurationError, match="completed an operation it never invoked"):
        client.ok()
    client.invoke("add", 1)
    with pytest.raises(ConfigurationError, match="still open"):
        client.invoke("add", 2)
    with pytest.raises(ConfigurationError, match="ok, fail or info"):
        client.complete("invoke")  # type: ignore[arg-type]


def test_an_operation_still_open_at_the_end_counts_as_unknown():
    history = History()
    history.client().invoke("add", 1)
    [op] = history.operations()
    assert (op.type, op.completion, op.latency) == ("info", None, None)


def test_values_are_frozen_when_recorded():
    history = History()
    client = history.client()
    written = [1, 2]
    client.invoke("read")
    client.ok(written)
    written.append(3)
    assert history.operations()[0].value == (1, 2)


def test_events_from_many_threads_get_distinct_ordered_indexes():
    history = History()

    def work() -> None:
        client = history.client()
        for i in range(200):
            client.invoke("add", i)
            client.ok()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.index for e in history.events] == list(range(8 * 400))
    assert len(history.operations()) == 1600


def test_pairing_refuses_a_history_its_writer_got_wrong():
    invoke = Op(0, 0, "invoke", "add", 1)
    with pytest.raises(ConfigurationError, match="event 1: process 0 invoked again"):
        pair([invoke, Op(1, 0, "invoke", "add", 2)])
    with pytest.raises(ConfigurationError, match="event 0: process 3 completed"):
        pair([Op(0, 3, "ok", "add", 1)])


def test_jsonl_round_trip_keeps_every_field(tmp_path):
    clock = Clock()
    history = History(faults=lambda: ("kill postgres",), clock=clock)
    client = history.client()
    client.invoke("read")
    clock.now += 1.5
    client.fail("503: database unavailable")
    path = history.write_jsonl(tmp_path / "history.jsonl")
    assert read_jsonl(path) == history.events
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "index": 0, "process": 0, "type": "invoke", "f": "read", "value": None, "time": 0.0,
        "faults": ["kill postgres"],
    }  # fmt: skip


def test_a_malformed_line_is_named(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"index": 0, "process": 0, "type": "invoke", "f": "add"}\n{"type": "done"}\n')
    with pytest.raises(ConfigurationError, match=r"h.jsonl:2: not a history event"):
        read_jsonl(path)


def test_the_elle_export_has_the_fields_elle_cli_reads(tmp_path):
    clock = Clock()
    history = History(clock=clock)
    client = history.client()
    client.invoke("txn", [["append", 5, 1], ["r", 5, None]])
    clock.now += 0.002
    client.ok([["append", 5, 1], ["r", 5, [1]]])
    lines = export_elle(history.events, tmp_path / "elle.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"index": 0, "type": "invoke", "f": "txn", "value": [["append", 5, 1], ["r", 5, None]],
         "process": 0, "time": 0},
        {"index": 1, "type": "ok", "f": "txn", "value": [["append", 5, 1], ["r", 5, [1]]],
         "process": 0, "time": 2_000_000},
    ]  # fmt: skip


def test_the_elle_export_of_an_add_carries_the_element_not_the_id_answered(tmp_path):
    history = History(clock=Clock())
    client = history.client()
    client.invoke("add", "order-7")
    client.ok(1042)  # the id the system gave it, kept for the unique-ids check
    lines = export_elle(history.events, tmp_path / "elle.json").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == ["order-7", "order-7"]


def test_windows_name_before_during_and_after():
    faults: list[str] = []
    history = History(faults=lambda: faults)
    client = history.client()
    for state in ([], ["latency api"], ["latency api", "kill redis"], []):
        faults[:] = state
        client.invoke("read")
        client.ok(())
    assert [name for name, _ in windows(history.operations())] == [
        "before", "latency api", "latency api + kill redis", "after",
    ]  # fmt: skip
