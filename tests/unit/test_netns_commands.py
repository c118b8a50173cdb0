"""Commands in a network namespace without nsenter: nft through libnftables, other
tools started by a thread that entered the namespace. Each test makes a scratch
namespace of its own (a thread unshares it), so no real interface is touched."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pytest_chaos import FaultError
from pytest_chaos.targets import nft
from pytest_chaos.targets.netns import NetNamespace, in_namespace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a network namespace needs root (CAP_SYS_ADMIN)"
)

RULES = """table inet pytest_chaos_test_1 {
  chain egress {
    type filter hook output priority -10; policy accept;
    ip daddr { 10.9.8.7 } numgen random mod 10000 < 2500 counter drop
  }
}
"""


def _scratch_namespace(owner: str = "scratch") -> NetNamespace:
    opened: dict[str, int] = {}

    def unshare() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x40000000) == 0, os.strerror(ctypes.get_errno())
        opened["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    thread = threading.Thread(target=unshare)
    thread.start()
    thread.join()
    fd = opened["fd"]
    return NetNamespace(fd, os.fstat(fd).st_ino, owner)


@pytest.fixture
def scratch() -> Iterator[NetNamespace]:
    ns = _scratch_namespace()
    try:
        yield ns
    finally:
        os.close(ns.fd)


@pytest.fixture(params=["libnftables", "nft command"])
def nft_path(request, monkeypatch) -> str:
    if request.param == "libnftables":
        assert nft.available(), "libnftables1 is a dependency of the nftables package"
    else:
        monkeypatch.setattr(nft, "available", lambda: False)
    return str(request.param)


def test_a_rule_set_applies_in_the_namespace_only(scratch, nft_path):
    scratch.run(["nft", "-f", "-"], input_text=RULES)
    assert "table inet pytest_chaos_test_1" in scratch.run(["nft", "list", "tables"])
    listed = json.loads(scratch.run(["nft", "-j", "list", "table", "inet", "pytest_chaos_test_1"]))
    rules = [item["rule"] for item in listed["nftables"] if "rule" in item]
    assert len(rules) == 1
    assert any("counter" in e for e in rules[0]["expr"])
    # pytest's own namespace never saw it.
    assert "pytest_chaos_test_1" not in nft.run("list tables").output
    scratch.run(["nft", "delete", "table", "inet", "pytest_chaos_test_1"])
    assert "pytest_chaos_test_1" not in scratch.run(["nft", "list", "tables"])


def test_output_options_mean_what_they_mean_to_the_nft_command(scratch, nft_path):
    scratch.run(["nft", "-f", "-"], input_text=RULES)
    stateful = scratch.run(["nft", "list", "ruleset"])
    stateless = scratch.run(["nft", "-s", "list", "ruleset"])
    assert "counter packets 0 bytes 0 drop" in stateful
    assert "counter drop" in stateless
    assert "packets" not in stateless


def test_each_namespace_has_one_worker_that_ends_when_idle(monkeypatch):
    monkeypatch.setattr(nft, "IDLE_S", 0.3)
    first, second = _scratch_namespace("first"), _scratch_namespace("second")
    try:
        first.run(["nft", "-f", "-"], input_text=RULES)
        worker = nft._workers[first.inode]
        assert "pytest_chaos_test_1" in first.run(["nft", "list", "tables"])
        assert nft._workers[first.inode] is worker  # the same thread, the same context
        # Each namespace its own worker: the other one has no such table.
        assert "pytest_chaos_test_1" not in second.run(["nft", "list", "tables"])
        assert nft._workers[second.inode] is not worker
        # Idle, it ends and leaves the registry; the next command gets a new worker.
        worker.thread.join(timeout=10)
        assert not worker.thread.is_alive(), "an idle worker should end"
        assert first.inode not in nft._workers
        assert "pytest_chaos_test_1" in first.run(["nft", "list", "tables"])
        assert nft._workers[first.inode] is not worker
    finally:
        os.close(first.fd)
        os.close(second.fd)


def test_what_the_library_path_does_not_take_goes_to_the_command():
    assert nft.understood(["-j", "list", "tables"])
    assert nft.understood(["-f", "-"])
    assert not nft.understood(["-a", "list", "ruleset"])  # handles: the command's job
    assert not nft.understood([])
    assert nft.command_of(["-s", "-j", "list", "ruleset"], None) == (
        "list ruleset",
        nft.OPTIONS["-s"] | nft.OPTIONS["-j"],
    )


def test_a_rule_set_with_an_error_applies_nothing_and_says_why(scratch, nft_path):
    broken = RULES.replace("counter drop", "counter drop\n    ip daddr { 10.9.8.6 } dropp")
    with pytest.raises(
        FaultError, match=r"nft failed in scratch's network namespace: .*syntax error"
    ):
        scratch.run(["nft", "-f", "-"], input_text=broken)
    assert "pytest_chaos_test_1" not in scratch.run(["nft", "list", "tables"])


def test_other_tools_run_inside_the_namespace(scratch):
    links = scratch.run(["ip", "-o", "link"])
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    with pytest.raises(FaultError, match="ip failed in scratch's network namespace"):
        scratch.run(["ip", "link", "del", "no-such-link"])


def test_the_work_of_a_thread_in_a_namespace_returns_or_raises_in_the_caller(scratch):
    assert os.readlink("/proc/thread-self/ns/net") != in_namespace(
        scratch, lambda: os.readlink("/proc/thread-self/ns/net")
    )

    def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        in_namespace(scratch, fails)


# -- the warm delayer --------------------------------------------------------------------


def _connect_ms(ns: NetNamespace, port: int) -> float:
    def connect() -> float:
        with socket.create_server(("127.0.0.1", port)):
            began = time.monotonic()
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            return (time.monotonic() - began) * 1000

    return in_namespace(ns, connect)


def test_a_warm_delayer_delays_the_packets_of_its_queue_once_ordered(scratch):
    from pytest_chaos.faults.nfqueue import Worker as _Delayer

    scratch.run(["ip", "link", "set", "lo", "up"])
    delayer = _Delayer()
    try:
        delayer.wait_warm()
        delayer.start(scratch, {"queue": 4321, "delay_ms": 150})
        scratch.run(
            ["iptables-restore", "--noflush"],
            input_text="*mangle\n-A OUTPUT -o lo -p tcp --dport 4444 --syn "
            "-j NFQUEUE --queue-num 4321 --queue-bypass\nCOMMIT\n",
        )
        # The SYN waits 150 ms in the delayer; nothing else on lo is queued.
        assert 140 <= _connect_ms(scratch, 4444) < 1000
        assert _connect_ms(scratch, 4445) < 50
        # pytest gone (its end of the socket closed): a delay in force stays until the
        # journal's undo stops it.
        delayer.control.close()
        assert 140 <= _connect_ms(scratch, 4444) < 1000
        assert delayer.proc.poll() is None
    finally:
        delayer.stop()
        assert delayer.proc.returncode is not None
    # Stopped: the rule's --queue-bypass lets traffic through undelayed.
    assert _connect_ms(scratch, 4444) < 50


def test_a_warm_delayer_without_orders_exits_with_its_pytest():
    from pytest_chaos.faults.nfqueue import Worker as _Delayer

    delayer = _Delayer()
    delayer.wait_warm()
    delayer.control.close()
    assert delayer.proc.wait(10) == 0
    delayer.stop()


def test_a_delayer_that_cannot_start_says_why(monkeypatch, tmp_path):
    from pytest_chaos import FaultError
    from pytest_chaos.faults.nfqueue import Worker as _Delayer

    # A Python that cannot import what the delayer needs: its last words are the reason.
    broken = tmp_path / "python"
    broken.write_text('#!/bin/sh\necho "ModuleNotFoundError: no netfilterqueue" >&2\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(broken))
    delayer = _Delayer()
    with pytest.raises(
        FaultError, match="the packet delayer did not start: ModuleNotFoundError: no netfilterqueue"
    ):
        delayer.wait_warm(timeout=5)
    assert delayer.proc.returncode == 1
