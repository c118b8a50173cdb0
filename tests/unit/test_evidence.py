import os
import time
import uuid
from dataclasses import dataclass

import pytest

from pytest_chaos import History, timeline
from pytest_chaos.evidence import _plain, kernel_lines, save, slug


def test_a_test_id_becomes_a_file_name():
    assert slug("tests/x_1.py::test_y[a-b]") == "tests-x_1.py--test_y-a-b"


@dataclass(frozen=True)
class Event:
    pid: int
    comm: str


def test_observations_become_plain_json_data():
    assert _plain({"victims": [Event(7, "api")], "n": (1, 2)}) == {
        "victims": [{"pid": 7, "comm": "api"}], "n": [1, 2],
    }  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="writing /dev/kmsg needs root")
def test_kernel_lines_of_the_window_are_kept_with_their_stamp():
    marker = f"pytest-chaos evidence test {uuid.uuid4().hex[:8]}"
    before = time.monotonic()
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(marker + "\n")
    lines = kernel_lines(before, time.monotonic())
    assert lines is not None
    assert [line for line in lines if line.endswith(marker)], lines[-5:]
    assert not [line for line in (kernel_lines(0, before - 5) or []) if marker in line]


def test_the_evidence_of_a_test_without_a_project_is_its_history_and_kernel_lines(tmp_path):
    done = timeline.begin("tests/t.py::test_x")
    try:
        history = timeline.history()
        assert isinstance(history, History)
        client = history.client()
        client.invoke("add", 1)
        client.ok()
        timeline.note_observation("bpf_api", {"connects": [Event(1, "x")]})
    finally:
        timeline.end()
    files = save(done, tmp_path, None)
    folder = "evidence/tests-t.py--test_x"
    assert files["history"] == f"{folder}/history.jsonl"
    assert files["elle"] == f"{folder}/history.elle.json"
    assert files["bpf:bpf_api"] == f"{folder}/bpf-bpf_api.json"
    assert '"comm": "x"' in (tmp_path / files["bpf:bpf_api"]).read_text()
    assert ("kernel" in files) == (os.geteuid() == 0)
