"""The journal on its own: entries written before, cleared after, replayed when their
pytest is gone."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_chaos import ConfigurationError, Journal
from pytest_chaos import journal as journal_module
from pytest_chaos.targets.linux import start_time

UNDONE: list[dict] = []


@journal_module.undoer("test-fault")
def _undo(data):
    if data.get("broken"):
        raise RuntimeError("the undo broke")
    UNDONE.append(data)
    return f"undid {data['name']}"


@pytest.fixture(autouse=True)
def _clean():
    UNDONE.clear()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _orphan(journal: Journal, name: str, **data):
    """Write an entry as if a pytest that has since died had written it (after its
    fault was applied, unless ``applied=False``)."""
    data = {"applied": True, **data}
    entry = journal.write("test-fault", f"fault {name}", {"name": name, **data})
    text = entry.path.read_text().replace(
        f'"owner_pid": {entry.owner_pid}', f'"owner_pid": {_dead_pid()}'
    )
    entry.path.write_text(text)
    return entry


def test_an_entry_lives_from_write_to_clear(tmp_path):
    journal = Journal(tmp_path, "run1")
    entry = journal.write("test-fault", "fault a", {"name": "a"})
    assert [e.description for e in journal.entries()] == ["fault a"]
    assert entry.path.name.startswith("run1-")
    journal.clear(entry)
    assert journal.entries() == []


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 3), (False, 0)])
def test_only_an_entry_whose_fault_outlives_the_machine_is_fsynced(
    tmp_path, monkeypatch, durable, fsyncs
):
    journal = Journal(tmp_path, "run1")
    journal.write("test-fault", "first", {"name": "first"})  # the run's record, once
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    entry = journal.write("test-fault", "fault a", {"name": "a"}, durable=durable)
    journal.clear(entry)
    # Written: the file and its folder; cleared: the folder.
    assert len(synced) == fsyncs
    # Either way it is on disk as far as another process can tell, at once.
    again = journal.write("test-fault", "fault b", {"name": "b"}, durable=durable)
    seen = Journal(tmp_path, "run2").entries()
    assert [(e.description, e.data["name"]) for e in seen] == [("first", "first"), ("fault b", "b")]
    journal.clear(again)


def test_entries_of_a_live_session_are_not_orphans(tmp_path):
    journal = Journal(tmp_path, "run1")
    journal.write("test-fault", "fault a", {"name": "a"})
    assert journal.orphans() == []
    assert journal.replay() == []
    assert UNDONE == []


def test_orphans_are_undone_newest_first_and_cleared(tmp_path):
    journal = Journal(tmp_path, "run1")
    _orphan(journal, "a")
    _orphan(journal, "b")
    replayed = Journal(tmp_path, "run2").replay()
    assert [r.outcome for r in replayed] == ["undid b", "undid a"]
    assert [d["name"] for d in UNDONE] == ["b", "a"]
    assert journal.entries() == []


def test_a_reused_pid_does_not_keep_an_entry_alive(tmp_path):
    """Same pid number, other process (different start time): still an orphan."""
    journal = Journal(tmp_path, "run1")
    entry = journal.write("test-fault", "fault a", {"name": "a"})
    entry.path.write_text(entry.path.read_text().replace(entry.owner_start, "1"))
    other = Journal(tmp_path, "run2")
    other._me = (-1, "")  # another session
    assert [e.description for e in other.orphans()] == ["fault a"]


def test_a_failed_undo_keeps_its_entry_for_next_time(tmp_path):
    journal = Journal(tmp_path, "run1")
    _orphan(journal, "a", broken=True)
    replayed = Journal(tmp_path, "run2").replay()
    assert replayed[0].outcome == "kept"
    assert "RuntimeError: the undo broke" in replayed[0].error
    assert len(journal.entries()) == 1


def test_a_half_written_entry_is_ignored(tmp_path):
    (tmp_path / "run1-1-0001.json").write_text('{"kind": "test-fa')
    assert Journal(tmp_path, "run2").entries() == []


def test_an_unknown_kind_is_refused_before_anything_is_applied(tmp_path):
    with pytest.raises(ConfigurationError, match="no undo is registered for fault kind 'nope'"):
        Journal(tmp_path, "run1").write("nope", "x", {})
    assert list(tmp_path.iterdir()) == []


def _kill_owner(journal: Journal, run_id: str) -> None:
    """Rewrite a run's record as if its pytest had since died."""
    path = journal.runs_directory / f"{run_id}.json"
    path.write_text(path.read_text().replace(f'"owner_pid": {journal._me[0]}', '"owner_pid": 1'))


def test_a_run_is_recorded_with_the_projects_it_touched(tmp_path):
    journal = Journal(tmp_path, "run1")
    journal.write("test-fault", "fault a", {"name": "a", "project": "shop"})
    journal.write("test-fault", "fault b", {"name": "b", "project": "bank"})
    journal.write("test-fault", "fault c", {"name": "c", "project": "shop"})
    [run] = journal.runs()
    assert (run.run_id, run.projects) == ("run1", frozenset({"shop", "bank"}))
    assert journal.dead_runs() == []  # its pytest (this one) is alive


def test_only_runs_whose_pytest_is_gone_are_dead(tmp_path):
    Journal(tmp_path, "live1").write("test-fault", "fault a", {"name": "a", "project": "p"})
    dead = Journal(tmp_path, "dead1")
    dead.write("test-fault", "fault b", {"name": "b", "project": "p"})
    _kill_owner(dead, "dead1")
    other = Journal(tmp_path, "run3")
    assert [r.run_id for r in other.dead_runs()] == ["dead1"]
    # Another journal knows neither run: nothing of them is its to sweep.
    assert Journal(tmp_path / "elsewhere", "run4").dead_runs() == []


def test_a_run_is_forgotten_only_once_nothing_of_it_is_in_force(tmp_path):
    journal = Journal(tmp_path, "run1")
    entry = journal.write("test-fault", "fault a", {"name": "a", "project": "p"})
    journal.forget_run("run1")
    assert [r.run_id for r in journal.runs()] == ["run1"]
    journal.clear(entry)
    journal.forget_run("run1")
    assert journal.runs() == []
    # A later fault of the same run records it again.
    journal.write("test-fault", "fault b", {"name": "b", "project": "p"})
    assert [r.run_id for r in journal.runs()] == ["run1"]


def test_an_owner_that_is_a_zombie_is_dead(tmp_path):
    """A pytest killed but not yet reaped by its parent still has /proc/PID/stat."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not journal_module.linux_gone(zombie.pid):  # exited, not reaped: a zombie
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    try:
        journal = Journal(tmp_path, "run1")
        entry = journal.write("test-fault", "fault a", {"name": "a", "applied": True})
        entry.path.write_text(
            entry.path.read_text()
            .replace(f'"owner_pid": {entry.owner_pid}', f'"owner_pid": {zombie.pid}')
            .replace(entry.owner_start, start_time(zombie.pid))
        )
        assert Path(f"/proc/{zombie.pid}/stat").exists()
        assert [r.outcome for r in Journal(tmp_path, "run2").replay()] == ["undid a"]
    finally:
        zombie.wait()


def test_a_fault_never_marked_applied_is_replayed_and_said_so(tmp_path):
    journal = Journal(tmp_path, "run1")
    _orphan(journal, "a", applied=False)
    [replayed] = Journal(tmp_path, "run2").replay()
    assert replayed.outcome == "pytest died while applying it; undid a"


def test_mark_applied_marks_the_entries_written_since_the_last_mark(tmp_path):
    journal = Journal(tmp_path, "run1")
    journal.write("test-fault", "fault a", {"name": "a"})
    journal.mark_applied()
    journal.write("test-fault", "fault b", {"name": "b"})
    applied = {e.description: e.data.get("applied", False) for e in journal.entries()}
    assert applied == {"fault a": True, "fault b": False}


def test_half_written_files_of_dead_writers_are_removed_and_named(tmp_path):
    journal = Journal(tmp_path, "run1")
    journal.write("test-fault", "fault a", {"name": "a", "project": "p"})
    dead = _dead_pid()
    stale = [
        tmp_path / f"run9-{dead}-0001.json.{dead}.tmp",
        journal.runs_directory / f"run9.json.{dead}.tmp",
    ]
    mine = tmp_path / f"run1-1-0002.json.{os.getpid()}.tmp"
    for path in [*stale, mine]:
        path.write_text('{"kind": "test-fa')
    assert sorted(journal.remove_stale_files()) == sorted(p.name for p in stale)
    assert not any(p.exists() for p in stale)
    assert mine.exists()  # a live writer (this process) may be at it
    assert len(journal.entries()) == 1
