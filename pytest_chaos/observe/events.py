"""The kernel's side of the probes: the structs the BPF programs emit (their layout
mirrors the C sources in ``pytest_chaos.bpf_programs``), and the pairing of raw
connect events into :class:`ConnectAttempt` records."""

from __future__ import annotations

import ctypes
import errno as errno_codes
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .observation import ConnectAttempt

_OUTCOMES = {
    errno_codes.ECONNREFUSED: "refused",
    errno_codes.ETIMEDOUT: "timeout",
    errno_codes.EHOSTUNREACH: "unreachable",
    errno_codes.ENETUNREACH: "unreachable",
    errno_codes.ECONNRESET: "reset",
}


class ProcessEventStruct(ctypes.Structure):
    """struct process_event of bpf_programs/process_events.c."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_int32),
        ("sig", ctypes.c_int32),
        ("result", ctypes.c_int32),
        ("in_scope", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    ]


class ConnectEventStruct(ctypes.Structure):
    """struct connect_event of bpf_programs/tcp_connect.c."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("skaddr", ctypes.c_uint64),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("error", ctypes.c_int32),
        ("kind", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RawConnectEvent:
    ts: float
    kind: int  # 1 started, 2 established, 3 error, 4 closed (bpf_programs/tcp_connect.c)
    skaddr: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    error: int


def assemble_attempts(events: Iterable[RawConnectEvent]) -> list[ConnectAttempt]:
    """Pair state changes (by socket) and error reports (by 4-tuple) into attempts."""
    open_: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    errors: dict[tuple[str, int, str, int], list[RawConnectEvent]] = {}
    for ev in sorted(events, key=lambda e: e.ts):
        if ev.kind == 1:
            if ev.skaddr in open_:
                done.append(open_.pop(ev.skaddr))
            open_[ev.skaddr] = {"started": ev.ts, "source": ev.saddr, "destination": ev.daddr,
                                "port": ev.dport, "outcome": "pending"}  # fmt: skip
        elif ev.kind in (2, 4) and ev.skaddr in open_:
            attempt = open_.pop(ev.skaddr)
            attempt.update(ended=ev.ts, source_port=ev.sport,
                           outcome="established" if ev.kind == 2 else "closed")  # fmt: skip
            done.append(attempt)
        elif ev.kind == 3:
            errors.setdefault((ev.saddr, ev.sport, ev.daddr, ev.dport), []).append(ev)
    done.extend(open_.values())
    attempts = []
    for a in sorted(done, key=lambda a: a["started"]):
        if a["outcome"] == "closed":
            for err in errors.get(
                (a["source"], a.get("source_port", 0), a["destination"], a["port"]), []
            ):
                if a["started"] <= err.ts <= (a.get("ended") or err.ts) + 1.0:
                    a["errno"] = err.error
                    a["outcome"] = _OUTCOMES.get(
                        err.error, errno_codes.errorcode.get(err.error, "error")
                    )
                    break
        attempts.append(ConnectAttempt(**a))
    return attempts
