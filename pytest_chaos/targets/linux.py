"""Checks on host pids before anything is sent to them.

A pid is acted on only when it is > 1, is not this process or its group, and its
cgroup names the container it was resolved from. An empty or stale lookup raises:
``kill(0, ...)`` would signal our own process group and ``kill(-1, ...)`` every
process we may signal.
"""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

from ..errors import UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

INIT_NAMES = frozenset({"tini", "docker-init", "dumb-init", "catatonit", "s6-svscan"})


def read_cgroup(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise UnsafeTarget(f"pid {pid} no longer exists (the process exited).") from None


def check_pid(pid: object, container_id: str, *, proc: Path = Path("/proc")) -> int:
    """Return ``pid`` if it is safe to signal as a process of ``container_id``."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise UnsafeTarget(f"refusing pid {pid!r}: not an integer pid.")
    if pid <= 1:
        raise UnsafeTarget(
            f"refusing pid {pid}: 0, 1 and negative pids address process groups or init, "
            "never a container's process (is the container running?)."
        )
    if pid == os.getpid() or pid == os.getpgrp():
        raise UnsafeTarget(f"refusing pid {pid}: it is this pytest process or its group.")
    if len(container_id) < 12:
        raise UnsafeTarget(f"refusing pid {pid}: no container id to check it against.")
    if container_id not in read_cgroup(pid, proc):
        raise UnsafeTarget(
            f"refusing pid {pid}: its cgroup does not name container {container_id[:12]} "
            "(the pid was reused or the container restarted)."
        )
    return pid


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    kids: list[int] = []
    for task in (proc / str(pid) / "task").glob("*"):
        try:
            kids.extend(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(kids))


def is_gone(pid: int, proc: Path = Path("/proc")) -> bool:
    """True once ``pid`` has exited (no longer listed, or a zombie awaiting its reaper)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def state(pid: int, proc: Path = Path("/proc")) -> str:
    """The process's state letter (R, S, D, T, Z...), or "" once it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def start_time(pid: int, proc: Path = Path("/proc")) -> str:
    """When ``pid`` started (field 22 of /proc/PID/stat, in clock ticks since boot).
    With the pid it names one process even after the number is reused; "" if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def is_alive(pid: int, started: str, proc: Path = Path("/proc")) -> bool:
    """Whether the process that started at ``started`` (see :func:`start_time`) still
    runs as ``pid``. A zombie is dead: it runs no code, it only waits to be reaped."""
    return bool(started) and start_time(pid, proc) == started and not is_gone(pid, proc)


def comm(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        raise UnsafeTarget(f"pid {pid} no longer exists (the process exited).") from None


def parent(pid: int, proc: Path = Path("/proc")) -> int:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def top_process_named(pids: set[int], name: str, proc: Path = Path("/proc")) -> int:
    """Among ``pids``, the process called ``name`` whose parent is not also called so
    (a postmaster, not its backends). Exactly one must match."""
    named = set()
    for pid in pids:
        try:
            if comm(pid, proc) == name:
                named.add(pid)
        except UnsafeTarget:
            continue
    tops = sorted(p for p in named if parent(p, proc) not in named)
    if len(tops) != 1:
        raise UnsafeTarget(
            f"expected one process named {name!r} at the top of its tree, found {len(tops)}"
            f" ({tops}); name the process exactly as /proc/PID/comm shows it."
        )
    return tops[0]


def main_process(init_pid: int, proc: Path = Path("/proc")) -> int:
    """The service's own process: the only child of an init wrapper (tini and the
    like), else the container's first process itself."""
    if init_pid <= 1:
        raise UnsafeTarget(f"container pid {init_pid} is not a running process.")
    if comm(init_pid, proc) not in INIT_NAMES:
        return init_pid
    kids = children(init_pid, proc)
    if len(kids) != 1:
        raise UnsafeTarget(
            f"init process {init_pid} ({comm(init_pid, proc)}) has {len(kids)} children; "
            "expected exactly one service process."
        )
    return kids[0]


def stop_process(pid: int, started: str, grace: float = 10.0) -> bool:
    """SIGTERM the process that started at ``started`` as ``pid`` (one of ours), and
    SIGKILL it if it still runs after ``grace`` seconds; return once it has exited.
    False if it was not running. The pid is pinned (pidfd) before it is checked, so a
    number reused by another process is never signalled."""
    if pid <= 1:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # exited already
        return False
    try:
        if not is_alive(pid, started):
            return False
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return True
            if select.select([pidfd], [], [], wait)[0]:  # readable once it exited
                return True
        return True
    finally:
        os.close(pidfd)
