"""Compiled BPF programs kept between sessions: a second session loads them without
the compiler and its probes see what the compiled ones see; an entry that does not
load is compiled again and replaced; ``CHAOS_BPF_CACHE=off`` keeps nothing. The
probes watch this process (its pid namespace, loopback), so no stack is needed."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess

import pytest

from pytest_chaos.observe import bpf_cache
from pytest_chaos.observe.bpf import PROBES, BpfSession, Scope
from pytest_chaos.observe.kernel import bpf_support

SUPPORT = bpf_support()
pytestmark = [
    pytest.mark.root,
    pytest.mark.bpf,
    pytest.mark.skipif(not SUPPORT.available, reason=f"BPF unavailable: {SUPPORT.reason}"),
]


def session() -> BpfSession:
    ns = os.stat("/proc/self/ns/pid")
    scope = Scope(
        addresses=("127.0.0.1",),
        pid=os.getpid(),
        pids=lambda: {os.getpid()},
        pid_namespaces=((ns.st_dev, ns.st_ino),),
    )
    return BpfSession(pid=os.getpid(), probes=PROBES, scope=scope)


def observe_some_work(tmp_path) -> tuple[BpfSession, set[str], int]:
    """A session around a refused connect, an fsync and a child's exit: (the closed
    session, how its programs were loaded, the child's pid)."""
    with session() as probes:
        assert probes.support.available, probes.support.reason
        loaded = kinds(probes)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", 1), timeout=5)
        with open(tmp_path / "synced", "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())
        proc = subprocess.Popen(["true"])
        proc.wait()
        pid = proc.pid
    return probes, loaded, pid


def assert_saw_the_work(probes: BpfSession, pid: int) -> None:
    obs = probes.observation
    assert obs.source == "bpf"
    assert any(c.outcome == "refused" and c.port == 1 for c in obs.connects)
    assert obs.sync is not None
    assert sum(obs.sync.buckets.values()) >= 1
    assert any(e.kind == "exit" and e.pid == pid for e in obs.process_events)
    assert obs.page_allocs > 0
    assert obs.state_changes.get("SYN_SENT", 0) >= 1


def kinds(probes: BpfSession) -> set[str]:
    """How the open session's programs were loaded: BPF (compiled by bcc) or
    CachedProgram (kept ones)."""
    assert set(probes._bpfs) == set(PROBES)
    return {type(program).__name__ for program in probes._bpfs.values()}


def test_a_second_session_loads_the_kept_programs_and_sees_the_same(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHAOS_BPF_CACHE", str(cache))
    first, loaded, pid = observe_some_work(tmp_path)
    assert loaded == {"BPF"}  # compiled by bcc, then kept
    assert_saw_the_work(first, pid)
    assert len(list(cache.glob("*.json"))) == len(PROBES)
    second, loaded, pid = observe_some_work(tmp_path)
    assert loaded == {"CachedProgram"}  # no compiler
    assert_saw_the_work(second, pid)


def test_a_kept_program_that_does_not_load_is_compiled_again_and_replaced(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHAOS_BPF_CACHE", str(cache))
    observe_some_work(tmp_path)
    for entry_file in cache.glob("*.json"):
        entry = json.loads(entry_file.read_text())
        # An instruction the verifier refuses (an unknown opcode) in every function.
        for function in entry["functions"]:
            function["insns"] = base64.b64encode(b"\xff" * 16).decode()
        entry_file.write_text(json.dumps(entry))
    probes, loaded, pid = observe_some_work(tmp_path)
    assert loaded == {"BPF"}
    assert_saw_the_work(probes, pid)
    again, loaded, pid = observe_some_work(tmp_path)
    assert loaded == {"CachedProgram"}
    assert_saw_the_work(again, pid)


def test_with_the_cache_off_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAOS_BPF_CACHE", "off")
    assert bpf_cache.cache_dir() is None
    with session() as probes:
        assert probes.support.available
        assert kinds(probes) == {"BPF"}


def test_the_key_changes_with_the_source_and_the_flags():
    key = bpf_cache.cache_key(b"int x;", ["-DA"], None)
    assert key == bpf_cache.cache_key(b"int x;", ["-DA"], None)
    assert key != bpf_cache.cache_key(b"int y;", ["-DA"], None)
    assert key != bpf_cache.cache_key(b"int x;", ["-DB"], None)
