"""Histories: every operation the clients issued, as Jepsen records them.

An operation is two events in one list: its *invoke*, then its completion, which is
``ok`` (it happened), ``fail`` (it definitely did not happen: a clean refusal, or a
connection refused before the request was sent) or ``info`` (unknown: a timeout, a
connection reset after the request was sent). A client whose operation ended
``info`` may still have that operation in flight inside the system, so, as Jepsen
does, it is taken as crashed: its next operation is issued under a new process
number, and a process never has two operations open at once.

Each event carries the faults in force at that moment, read from a callable the
caller supplies (the timeline's faults in force). Checkers in
:mod:`pytest_chaos.observe.checkers` judge the whole history once the faults are
healed and the final reads are done.

The history is written as JSON lines (one event a line) and can be exported in the
JSON form Elle's command-line checker (``elle-cli``) reads, for users who want its
transactional checks on histories of their own systems.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigurationError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

OpType = Literal["invoke", "ok", "fail", "info"]
COMPLETIONS: tuple[OpType, ...] = ("ok", "fail", "info")


@dataclass(frozen=True, slots=True)
class Op:
    """One event of a history. ``time`` is seconds since the history began."""

    index: int
    process: int
    type: OpType
    f: str
    value: Any = None
    time: float = 0.0
    #: Faults in force at this event (their descriptions), in the order applied.
    faults: tuple[str, ...] = ()
    #: For a completion: what the client saw when it failed (or None).
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
            "time": round(self.time, 6),
        }
        if self.faults:
            out["faults"] = list(self.faults)
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        kind = data.get("type")
        if kind not in ("invoke", *COMPLETIONS):
            raise ConfigurationError(
                f"history event {data.get('index', '?')} has type {kind!r}; expected "
                "invoke, ok, fail or info."
            )
        return cls(
            index=int(data["index"]),
            process=int(data["process"]),
            type=kind,
            f=str(data["f"]),
            value=_frozen(data.get("value")),
            time=float(data.get("time", 0.0)),
            faults=tuple(data.get("faults", ())),
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke and its completion (None: still open when the history ended, which
    counts as ``info``: nobody knows whether it happened)."""

    invoke: Op
    completion: Op | None

    @property
    def type(self) -> OpType:
        return self.completion.type if self.completion else "info"

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def value(self) -> Any:
        """The completion's value when it has one (a read's result), else the
        invoke's (what was written)."""
        if self.completion is not None and self.completion.value is not None:
            return self.completion.value
        return self.invoke.value

    @property
    def latency(self) -> float | None:
        return None if self.completion is None else self.completion.time - self.invoke.time


class Client:
    """One logical client of a history: issues one operation at a time, and takes a
    new process number after an ``info`` (it is taken as crashed)."""

    def __init__(self, history: History, process: int) -> None:
        self._history = history
        self.process = process
        self._open: Op | None = None

    def invoke(self, f: str, value: Any = None) -> Op:
        if self._open is not None:
            raise ConfigurationError(
                f"process {self.process} invoked {f!r} while its {self._open.f!r} "
                f"(event {self._open.index}) is still open; complete it first."
            )
        self._open = self._history._event(self.process, "invoke", f, value, None)
        return self._open

    def complete(self, type: OpType, value: Any = None, *, error: str | None = None) -> Op:
        if self._open is None:
            raise ConfigurationError(
                f"process {self.process} completed an operation it never invoked."
            )
        if type not in COMPLETIONS:
            raise ConfigurationError(f"a completion is ok, fail or info, not {type!r}.")
        invoked, self._open = self._open, None
        done = self._history._event(self.process, type, invoked.f, value, error)
        if type == "info":
            self.process = self._history._new_process()
        return done

    def ok(self, value: Any = None) -> Op:
        return self.complete("ok", value)

    def fail(self, error: str, value: Any = None) -> Op:
        return self.complete("fail", value, error=error)

    def info(self, error: str, value: Any = None) -> Op:
        return self.complete("info", value, error=error)


class History:
    """A thread-safe, append-only list of events. ``faults`` returns the
    descriptions of the faults in force now; ``clock`` is monotonic seconds, and
    event times count from ``started`` (default: when the history was made)."""

    def __init__(
        self,
        *,
        faults: Callable[[], Sequence[str]] = tuple,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self._faults = faults
        self._clock = clock
        self._lock = threading.Lock()
        self._events: list[Op] = []
        self._processes = 0
        #: The clock's reading that event times are relative to (default: now).
        self.started = clock() if started is None else started

    def client(self) -> Client:
        return Client(self, self._new_process())

    def _new_process(self) -> int:
        with self._lock:
            self._processes += 1
            return self._processes - 1

    def _event(self, process: int, type: OpType, f: str, value: Any, error: str | None) -> Op:
        with self._lock:
            # Read under the lock: a rename_fault after this event sees it.
            faults = tuple(self._faults())
            op = Op(
                index=len(self._events),
                process=process,
                type=type,
                f=f,
                value=_frozen(value),
                time=self._clock() - self.started,
                faults=faults,
                error=error,
            )
            self._events.append(op)
        return op

    @property
    def events(self) -> list[Op]:
        with self._lock:
            return list(self._events)

    def rename_fault(self, old: str, new: str) -> None:
        """Name ``old`` ``new`` in every event so far (once, where both are there): a
        fault being applied gets the name it was applied under."""
        with self._lock:
            for i, op in enumerate(self._events):
                if old in op.faults:
                    renamed = dict.fromkeys(new if f == old else f for f in op.faults)
                    self._events[i] = dataclasses.replace(op, faults=tuple(renamed))

    def __len__(self) -> int:
        return len(self._events)

    def operations(self) -> list[Operation]:
        return pair(self.events)

    def write_jsonl(self, path: Path) -> Path:
        write_jsonl(self.events, path)
        return path


def pair(events: Iterable[Op]) -> list[Operation]:
    """Each invoke with its completion, in invoke order. A completion with no open
    invoke of its process, or a second invoke while one is open, is an error of the
    history's writer and is refused with the event's index."""
    open_by_process: dict[int, int] = {}
    out: list[tuple[Op, Op | None]] = []
    for op in events:
        if op.type == "invoke":
            if op.process in open_by_process:
                raise ConfigurationError(
                    f"history event {op.index}: process {op.process} invoked again while "
                    f"event {out[open_by_process[op.process]][0].index} is still open."
                )
            open_by_process[op.process] = len(out)
            out.append((op, None))
        else:
            slot = open_by_process.pop(op.process, None)
            if slot is None:
                raise ConfigurationError(
                    f"history event {op.index}: process {op.process} completed ({op.type}) "
                    "an operation it never invoked."
                )
            out[slot] = (out[slot][0], op)
    return [Operation(i, c) for i, c in out]


def write_jsonl(events: Iterable[Op], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for op in events:
            out.write(json.dumps(op.as_dict(), separators=(",", ":"), default=_plain) + "\n")


def read_jsonl(path: Path) -> list[Op]:
    """A history written by :func:`write_jsonl` (or by hand, in the same form)."""
    events = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(Op.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigurationError(f"{path}:{number}: not a history event ({exc}).") from exc
    return events


def export_elle(events: Iterable[Op], path: Path, *, writes: Iterable[str] = ("add",)) -> Path:
    """Write the history as elle-cli reads JSON: one map a line with ``index``,
    ``type``, ``f``, ``value``, ``process`` and ``time`` in integer nanoseconds.
    Keywords are plain strings; tuples become lists. Fault names and errors, which
    Elle does not read, are left out. The completion of an operation named in
    ``writes`` carries its invoke's value, as Elle expects of a write (the element
    added, not the id the system answered with, which our history keeps there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fs = set(writes)
    invoked: dict[int, Any] = {}
    with path.open("w", encoding="utf-8") as out:
        for op in events:
            value = op.value
            if op.type == "invoke":
                invoked[op.process] = op.value
            elif op.f in write_fs and op.process in invoked:
                value = invoked.pop(op.process)
            record = {
                "index": op.index,
                "type": op.type,
                "f": op.f,
                "value": value,
                "process": op.process,
                "time": round(op.time * 1e9),
            }
            out.write(json.dumps(record, separators=(",", ":"), default=_plain) + "\n")
    return path


def faults_met(op: Operation) -> tuple[str, ...]:
    """The faults an operation may have met: those in force at its invoke or at its
    completion (an operation in flight when a fault began met it), in order."""
    met = dict.fromkeys(op.invoke.faults)
    if op.completion is not None:
        met.update(dict.fromkeys(op.completion.faults))
    return tuple(met)


def windows(operations: Iterable[Operation]) -> Iterator[tuple[str, Operation]]:
    """Each operation, in invoke order, with the name of its fault window: the
    faults it may have met (:func:`faults_met`) joined with " + " in the order they
    were first met in the history (the same faults make one window, whatever the
    order an operation saw them in); if it met none, ``before`` (no operation had
    met a fault yet), ``after`` (none will) or ``between`` (between faults)."""
    ops = sorted(operations, key=lambda o: o.invoke.index)
    met = [faults_met(op) for op in ops]
    first: dict[str, int] = {}
    for faults in met:
        for fault in faults:
            first.setdefault(fault, len(first))
    last_met = max((i for i, faults in enumerate(met) if faults), default=-1)
    seen_fault = False
    for i, (op, faults) in enumerate(zip(ops, met, strict=True)):
        if faults:
            seen_fault = True
            yield " + ".join(sorted(faults, key=first.__getitem__)), op
        elif not seen_fault:
            yield "before", op
        else:
            yield ("between" if i < last_met else "after"), op


def _frozen(value: Any) -> Any:
    """Values as they were at the event: lists become tuples, so a later change to
    the caller's list does not rewrite history (and values stay hashable)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    raise TypeError(f"cannot write {type(value).__name__} into a history")
