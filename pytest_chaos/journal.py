"""The crash-safe record of faults in force.

An entry is written (and fsynced) *before* a fault is applied and removed after its
undo completed. If pytest dies with ``kill -9`` or the machine is lost, the entries
remain; the next session replays their undo (and says so), as does
``pytest --chaos-cleanup``. An entry holds plain data only: the undo of each kind is
a function registered under the kind's name, given that data.

Entries of a pytest that is still running (another session on the same machine)
are left alone: its own teardown will undo them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .targets.linux import start_time

Undo = Callable[[dict[str, Any]], str]

#: Modules whose import registers journal undos (one per fault family).
FAULT_MODULES = (
    "pytest_chaos.faults.process",
    "pytest_chaos.faults.network",
    "pytest_chaos.faults.resources",
    "pytest_chaos.faults.postgres",
    "pytest_chaos.faults.latency",
)
_UNDOS: dict[str, Undo] = {}


def undoer(kind: str) -> Callable[[Undo], Undo]:
    """Register the function that undoes a ``kind`` entry from its data alone. It
    returns a sentence saying what it did."""

    def register(fn: Undo) -> Undo:
        _UNDOS[kind] = fn
        return fn

    return register


def new_run_id() -> str:
    """A short id for one pytest session; everything it creates carries it."""
    return secrets.token_hex(4)


def default_directory() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pytest-chaos/journal")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / (
        "pytest-chaos/journal"
    )


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


@dataclass(frozen=True)
class Replayed:
    entry: Entry
    outcome: str
    error: str | None = None


class Journal:
    def __init__(self, directory: Path, run_id: str) -> None:
        self.directory = directory
        self.run_id = run_id
        self._seq = 0
        self._me = (os.getpid(), start_time(os.getpid()))

    def write(self, kind: str, description: str, data: dict[str, Any]) -> Entry:
        """Record a fault about to be applied. Durable when this returns."""
        if kind not in _UNDOS:
            raise ConfigurationError(f"no undo is registered for fault kind {kind!r}.")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        )
        body = json.dumps(
            {
                "kind": kind,
                "description": description,
                "run_id": self.run_id,
                "owner_pid": entry.owner_pid,
                "owner_start": entry.owner_start,
                "created": entry.created,
                "data": data,
            },
            indent=2,
        )
        tmp = entry.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, entry.path)
        _fsync_dir(self.directory)
        return entry

    def update(self, entry: Entry, data: dict[str, Any]) -> Entry:
        """Add to an entry's data what became known while applying (e.g. a pid)."""
        fresh = self.write(entry.kind, entry.description, {**entry.data, **data})
        self.clear(entry)
        return fresh

    def clear(self, entry: Entry) -> None:
        """The fault was undone: forget it."""
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        _fsync_dir(self.directory)

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                found.append(
                    Entry(
                        path=path,
                        kind=str(raw["kind"]),
                        description=str(raw["description"]),
                        run_id=str(raw["run_id"]),
                        owner_pid=int(raw["owner_pid"]),
                        owner_start=str(raw.get("owner_start", "")),
                        created=float(raw["created"]),
                        data=dict(raw["data"]),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written by a crash before the rename: nothing was applied
        return found

    def orphans(self) -> list[Entry]:
        """Entries whose pytest is gone (not this process, not a live session)."""
        return [e for e in self.entries() if not self._owner_alive(e)]

    def _owner_alive(self, entry: Entry) -> bool:
        if (entry.owner_pid, entry.owner_start) == self._me:
            return True
        return bool(entry.owner_start) and start_time(entry.owner_pid) == entry.owner_start

    def replay(self) -> list[Replayed]:
        """Undo every orphaned entry, newest first; keep those whose undo failed."""
        for module in FAULT_MODULES:
            importlib.import_module(module)
        results = []
        for entry in sorted(self.orphans(), key=lambda e: e.created, reverse=True):
            undo = _UNDOS.get(entry.kind)
            if undo is None:
                results.append(Replayed(entry, "kept", f"no undo for kind {entry.kind!r}"))
                continue
            try:
                outcome = undo(entry.data)
            except Exception as exc:  # noqa: BLE001 - reported; the entry stays for next time
                results.append(Replayed(entry, "kept", f"{type(exc).__name__}: {exc}"))
                continue
            self.clear(entry)
            results.append(Replayed(entry, outcome))
        return results


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
