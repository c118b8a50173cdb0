"""Did the fault bite? Each fault's evidence of effect, read from the kernel and
Docker against the real stack: present when traffic, work or a process met the
fault, absent when nothing did; and the "no effect" verdict a test gets for a
fault that did not bite, in every report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_chaos.faults.bandwidth import bandwidth
from pytest_chaos.faults.latency import latency
from pytest_chaos.faults.network import partition
from pytest_chaos.faults.process import kill, pause
from pytest_chaos.faults.resources import cpu_quota, io_contention, memory_cap

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONNECT = (
    "import socket\n"
    "for _ in range(3):\n"
    "    try:\n"
    "        socket.create_connection(('postgres', 5432), timeout=0.3).close()\n"
    "    except OSError:\n"
    "        pass\n"
)
BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0:\n    pass\n"
BULK = (
    "import socket\n"
    "s = socket.create_connection(('redis', 6379))\n"
    "payload = b'x' * 500_000\n"
    "head = b'*3\\r\\n$3\\r\\nSET\\r\\n$4\\r\\nbulk\\r\\n$%d\\r\\n' % len(payload)\n"
    "s.sendall(head + payload + b'\\r\\n')\n"
    "s.recv(16)\n"
)


def run_in(service, code: str) -> None:
    service.container().exec_run(["python3", "-c", code])


def test_a_partition_bites_only_when_traffic_meets_it(chaos_project):
    api = chaos_project.service("trading-api")
    with partition(api, [chaos_project.service("postgres")]) as idle:
        assert idle.effect().took is False
        assert idle.effect().evidence == "0 packets dropped by its rules"
    with partition(api, [chaos_project.service("postgres")]) as used:
        run_in(api, CONNECT)
        live = used.effect()
    assert live.took
    assert used.effect() == live or used.effect().took  # kept after the undo
    assert used.figures()["took_effect"] == "yes"


def test_a_cpu_quota_bites_only_when_the_service_wants_more(chaos_project):
    api = chaos_project.service("trading-api")
    with cpu_quota(api, 0.2) as handle:
        run_in(api, BUSY)
        effect = handle.effect()
    assert effect.took, effect
    assert "periods throttled" in effect.evidence
    throttled, periods = handle.throttling()
    assert 0 < throttled <= periods


def test_a_kill_and_a_pause_bite(chaos_project):
    redis = chaos_project.service("redis")
    with kill(redis, "SIGKILL") as killed:
        pass
    assert killed.effect().took
    assert killed.effect().evidence.endswith("exited")
    with pause(redis) as paused:
        assert paused.effect().took
    assert paused.effect().evidence == "its container is frozen"


def test_latency_bites_when_packets_go_to_the_peer(chaos_project):
    api = chaos_project.service("trading-api")
    with latency(api, "20ms", peers=[chaos_project.service("postgres")]) as handle:
        run_in(api, CONNECT)
    assert handle.effect().took, handle.effect()
    assert "packets" in handle.effect().evidence


def test_a_bandwidth_limit_bites_when_a_bulk_send_exceeds_it(chaos_project):
    api = chaos_project.service("trading-api")
    with bandwidth(api, "8mbit") as handle:
        run_in(api, BULK)
    assert handle.effect().took, handle.effect()


def test_a_memory_cap_far_above_use_does_not_bite(chaos_project):
    redis = chaos_project.service("redis")
    with memory_cap(redis, "1g") as handle:
        effect = handle.effect()
    assert effect.took is False
    assert "of the 1024 MiB cap; 0 OOM kill(s)" in effect.evidence


def test_io_contention_bites_once_stress_ng_writes(chaos_project):
    postgres = chaos_project.service("postgres")
    with io_contention(postgres, workers=1, bytes_per_worker="16m") as handle:
        from pytest_chaos import wait_for_recovery

        wait_for_recovery(lambda: handle.effect().took, timeout=30, what="stress-ng's writes")
    assert "stress-ng wrote" in handle.effect().evidence


def test_a_test_whose_fault_did_not_bite_is_reported_as_no_effect_everywhere(
    pytester, chaos_project
):
    pytester.makepyfile(
        """
        import pytest
        from pytest_chaos import FaultDidNotTakeEffect

        def test_idle_partition(chaos):
            chaos.partition("trading-api", ["postgres"])  # no traffic meets it

        @pytest.mark.effect_optional
        def test_undo_only(chaos):
            chaos.partition("trading-api", ["postgres"])

        def test_own_criterion(chaos):
            chaos.kill("redis")
            raise FaultDidNotTakeEffect("the queue never backed up")
        """
    )
    result = pytester.runpytest_subprocess(
        f"--chaos-project={chaos_project.name}",
        f"--chaos-journal={pytester.path / 'journal'}",
        "--junitxml=junit.xml",
        "--chaos-report=out",
        "-rA",
    )
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "the fault did not take effect: partition (drop) trading-api <-> postgres *: "
            "0 packets dropped by its rules",
            "*test_idle_partition  partition  trading-api  NO EFFECT*",
        ]
    )
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")  # noqa: S314
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("3", "2", "0")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    error = cases["test_idle_partition"].find("error")
    assert error.get("message").startswith("the fault did not take effect: partition")
    assert cases["test_own_criterion"].find("error").get("message") == (
        "the fault did not take effect: the queue never backed up"
    )
    tests = json.loads((pytester.path / "out" / "report.json").read_text())["tests"]
    outcomes = {t["nodeid"].rsplit("::", 1)[1]: t["outcome"] for t in tests}
    assert outcomes == {
        "test_idle_partition": "no effect",
        "test_undo_only": "passed",
        "test_own_criterion": "no effect",
    }
    [idle] = [t for t in tests if t["nodeid"].endswith("test_idle_partition")]
    assert idle["figures"]["chaos_fault_1_took_effect"] == "no"
