"""The crash-safe record of faults in force.

An entry is written *before* a fault is applied and removed after its undo
completed. It survives pytest's death at once (the page cache keeps it); it is also
fsynced, to survive the machine's loss, unless its fault lives only in kernel state
that a crash of the machine takes with it (``durable=False``: nft tables, qdiscs,
cgroup limits), where the fsync would cost the fault's application a millisecond
for nothing. If pytest dies with ``kill -9`` or the machine is lost, the entries
remain; the next session replays their undo (and says so), as does
``pytest --chaos-cleanup``. An entry holds plain data only: the undo of each kind is
a function registered under the kind's name, given that data.

Entries of a pytest that is still running (another session on the same machine)
are left alone: its own teardown will undo them.

Beside the entries, ``runs/<run id>.json`` records each run that journaled a fault:
its pytest (pid and start time) and the compose projects it touched. It is the proof
of ownership the sweep needs: what carries a run's id (an nft table) is removed only
when this journal knows that run, knows its pytest is gone, and the container is in
a project that run touched. A run of another journal, or a live one, is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigurationError
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .registry import registered_undo, undo_for, undoer
from .targets.linux import is_alive, start_time
from .targets.linux import is_gone as linux_gone

__all__ = ["Entry", "Journal", "Replayed", "Run", "new_run_id", "undoer"]

T = TypeVar("T")


def new_run_id() -> str:
    """A short id for one pytest session; everything it creates carries it."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str
    description: str
    run_id: str
    owner_pid: int
    owner_start: str
    created: float
    data: dict[str, Any]
    #: Fsynced: its fault would outlive a crash of the machine.
    durable: bool = True


@dataclass(frozen=True)
class Replayed:
    entry: Entry
    outcome: str
    error: str | None = None
    #: No undo was registered for the entry's kind (yet: one in a test module is known
    #: only once collection imported it).
    unknown_kind: bool = False


@dataclass(frozen=True)
class Run:
    """A run that journaled faults: whose it was and which projects it touched."""

    run_id: str
    owner_pid: int
    owner_start: str
    projects: frozenset[str]


class Journal:
    """The journal in ``directory``, written by run ``run_id`` (this session)."""

    def __init__(self, directory: Path, run_id: str) -> None:
        self.directory = directory
        self.run_id = run_id
        self._seq = 0
        self._me = (os.getpid(), start_time(os.getpid()))
        self._projects: set[str] | None = None  # None: this run's record is not written
        #: Entries written whose fault is not yet known to be in force.
        self._applying: list[Entry] = []

    @property
    def runs_directory(self) -> Path:
        return self.directory / "runs"

    def write(
        self, kind: str, description: str, data: dict[str, Any], *, durable: bool = True
    ) -> Entry:
        """Record a fault about to be applied: safe from pytest's death when this
        returns, and from the machine's loss unless ``durable`` is False (a fault that
        lives only in kernel state goes with the machine)."""
        undo = registered_undo(kind)
        if undo is None:
            raise ConfigurationError(
                f"no undo is registered for fault kind {kind!r}: decorate the function that "
                f"undoes it with @pytest_chaos.undoer({kind!r}) before the fault is applied."
            )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._note_run(data.get("project"))
        # Where the undo lives, for the message if a later session cannot find it.
        data = {**data, "undo_module": str(getattr(undo, "__module__", "?"))}
        self._seq += 1
        entry = Entry(
            path=self.directory / f"{self.run_id}-{os.getpid()}-{self._seq:04d}.json",
            kind=kind,
            description=description,
            run_id=self.run_id,
            owner_pid=self._me[0],
            owner_start=self._me[1],
            created=time.time(),
            data=data,
            durable=durable,
        )
        _store(entry)
        if not data.get("applied"):
            self._applying.append(entry)
        return entry

    def mark_applied(self) -> None:
        """The faults whose entries this run wrote last are in force now: say so in
        their entries, so that a replay can tell a fault that was never applied
        (pytest died while applying it) from one that was undone behind our back."""
        applying, self._applying = self._applying, []
        for entry in applying:
            if entry.path.exists():
                self.update(entry, {"applied": True})

    def _note_run(self, project: object) -> None:
        """Write (or extend) this run's record before its first entry of a project."""
        projects = set(self._projects or ())
        if isinstance(project, str) and project:
            projects.add(project)
        if self._projects is not None and projects == self._projects:
            return
        self.runs_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps(
            {
                "run_id": self.run_id,
                "owner_pid": self._me[0],
                "owner_start": self._me[1],
                "projects": sorted(projects),
            }
        )
        _write_durably(self.runs_directory / f"{self.run_id}.json", body)
        self._projects = projects

    def runs(self) -> list[Run]:
        """Every run this journal has a record of."""
        return _read_all(
            self.runs_directory,
            lambda path, raw: Run(
                run_id=str(raw["run_id"]),
                owner_pid=int(raw["owner_pid"]),
                owner_start=str(raw["owner_start"]),
                projects=frozenset(str(p) for p in raw["projects"]),
            ),
        )

    def dead_runs(self) -> list[Run]:
        """Runs of this journal whose pytest is gone: what carries their id is ours
        to remove."""
        return [r for r in self.runs() if not self._alive(r.owner_pid, r.owner_start)]

    def forget_run(self, run_id: str) -> None:
        """Drop a run's record once nothing of it is left in force (a run whose
        record is gone is never swept: the safe side)."""
        if any(e.run_id == run_id for e in self.entries()):
            return
        with contextlib.suppress(FileNotFoundError):
            (self.runs_directory / f"{run_id}.json").unlink()
        if run_id == self.run_id:
            self._projects = None

    def update(self, entry: Entry, data: dict[str, Any]) -> Entry:
        """Add to an entry's data what became known while applying (e.g. a pid). The
        entry is rewritten in place (atomically): the old or the new one is there."""
        fresh = dataclasses.replace(entry, data={**entry.data, **data})
        _store(fresh)
        self._applying = [fresh if e.path == entry.path else e for e in self._applying]
        return fresh

    def clear(self, entry: Entry) -> None:
        """The fault was undone: forget it."""
        self._applying = [e for e in self._applying if e.path != entry.path]
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        if entry.durable:
            _fsync_dir(self.directory)

    def entries(self) -> list[Entry]:
        """Every entry in the journal, of live runs and dead ones."""
        return _read_all(
            self.directory,
            lambda path, raw: Entry(
                path=path,
                kind=str(raw["kind"]),
                description=str(raw["description"]),
                run_id=str(raw["run_id"]),
                owner_pid=int(raw["owner_pid"]),
                owner_start=str(raw.get("owner_start", "")),
                created=float(raw["created"]),
                data=dict(raw["data"]),
            ),
        )

    def orphans(self) -> list[Entry]:
        """Entries whose pytest is gone (not this process, not a live session)."""
        return [e for e in self.entries() if not self._owner_alive(e)]

    def _owner_alive(self, entry: Entry) -> bool:
        return self._alive(entry.owner_pid, entry.owner_start)

    def _alive(self, pid: int, started: str) -> bool:
        if (pid, started) == self._me:
            return True
        return is_alive(pid, started)

    def replay(self) -> list[Replayed]:
        """Undo every orphaned entry, newest first; keep those whose undo failed."""
        results = []
        for entry in sorted(self.orphans(), key=lambda e: e.created, reverse=True):
            try:
                undo = undo_for(entry.kind)
            except ConfigurationError as exc:  # a fault module that does not import
                results.append(Replayed(entry, "kept", str(exc), unknown_kind=True))
                continue
            if undo is None:
                results.append(Replayed(entry, "kept", _unknown_kind(entry), unknown_kind=True))
                continue
            try:
                outcome = undo(entry.data)
            except Exception as exc:  # noqa: BLE001 - reported; the entry stays for next time
                results.append(Replayed(entry, "kept", f"{type(exc).__name__}: {exc}"))
                continue
            self.clear(entry)
            if not entry.data.get("applied"):
                outcome = f"pytest died while applying it; {outcome}"
            results.append(Replayed(entry, outcome))
        return results

    def remove_stale_files(self) -> list[str]:
        """Remove the temporary files of writes that a dead pytest left half done (an
        entry or a run record it was writing when it died: what it was about to
        record was not yet durable, so nothing relies on it). Returns their names."""
        removed = []
        for directory in (self.directory, self.runs_directory):
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.tmp")):
                if self._writer_alive(path):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path.name)
        return removed

    def _writer_alive(self, path: Path) -> bool:
        """Whether the pytest writing ``path`` may still be at it. Its pid is in the
        name; a name without one is from an older version: stale after an hour."""
        pid = path.name.removesuffix(".tmp").rpartition(".")[2]
        if pid.isdigit():
            return int(pid) == os.getpid() or not linux_gone(int(pid))
        try:
            return time.time() - path.stat().st_mtime < 3600
        except FileNotFoundError:
            return False


def _unknown_kind(entry: Entry) -> str:
    where = entry.data.get("undo_module") if isinstance(entry.data, dict) else None
    defined = f" (it was defined in module {where!r})" if where else ""
    return (
        f"no undo is registered for fault kind {entry.kind!r}{defined}: define it in a "
        "conftest.py or in a module named by a 'pytest_chaos.faults' entry point, so that "
        "it is known before tests are collected"
    )


def _read_all(directory: Path, build: Callable[[Path, Any], T]) -> list[T]:
    """Every ``*.json`` file in ``directory`` that reads whole, built into an object.
    A file that does not was half-written by a crash before its rename: what it was
    about to record was never applied."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(build(path, json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _store(entry: Entry) -> None:
    body = {
        "kind": entry.kind,
        "description": entry.description,
        "run_id": entry.run_id,
        "owner_pid": entry.owner_pid,
        "owner_start": entry.owner_start,
        "created": entry.created,
        "data": entry.data,
    }
    _write_durably(entry.path, json.dumps(body, indent=2), sync=entry.durable)


def _write_durably(path: Path, body: str, *, sync: bool = True) -> None:
    """Write ``path`` so that a crash leaves either the old file or the whole new one
    (``sync``: a crash of the machine too, else of the writing process)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the writer's pid: see _writer_alive
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
