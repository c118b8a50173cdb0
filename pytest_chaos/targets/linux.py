"""Checks on host pids before anything is sent to them.

A pid is acted on only when it is > 1, is not this process or its group, and its
cgroup names the container it was resolved from. An empty or stale lookup raises:
``kill(0, ...)`` would signal our own process group and ``kill(-1, ...)`` every
process we may signal.
"""

from __future__ import annotations

import contextlib
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
            f"refusing pid {pid}: its cgroup does not name container {container_id[:12]}, "
            "so it is another process (the container's process exited, or the number came "
            "from an engine whose pids are not this kernel's)."
        )
    return pid


def nspid(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The pid of ``pid`` in each pid namespace it is in, from the one ``proc`` shows
    outwards to its own (the NSpid line of /proc/PID/status)."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise UnsafeTarget(f"pid {pid} no longer exists (the process exited).") from None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(n) for n in line.split()[1:]]
    return [pid]  # a kernel before 4.1 has no NSpid: one namespace, as far as it says


def started_wall(pid: int, proc: Path = Path("/proc")) -> float | None:
    """When ``pid`` started, in seconds since the epoch (None once it is gone). The
    kernel gives its boot time in whole seconds, so this is up to 1 s early."""
    ticks = start_time(pid, proc)
    if not ticks:
        return None
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    boot = next(
        (int(line.split()[1]) for line in stat.splitlines() if line.startswith("btime ")), 0
    )
    return boot + int(ticks) / os.sysconf("SC_CLK_TCK")


#: How much earlier than Docker's StartedAt a container's first process may have been
#: made (runc creates it, then the engine sets up its network and starts it). Measured
#: here over 40 containers of the exchange started by compose: 0.41-0.59 s idle,
#: 0.43-0.61 s beside ``stress-ng --cpu 0`` (as read by :func:`started_wall`, which
#: reads up to 1 s early). 30 s leaves room for a far slower machine and still tells a
#: process that ran before the container from its first process.
CREATED_BEFORE_START_S = 30.0


def prove_first_process(
    pid: object,
    container_id: str,
    *,
    pid_namespace: str = "own",
    started_at: float | None,
    proc: Path = Path("/proc"),
) -> int:
    """Return ``pid`` once it is proved to be, right now on this kernel, the first
    process of container ``container_id`` as an engine reported it: a pid that
    :func:`check_pid` accepts (its cgroup names the container), pid 1 of a pid
    namespace one level below ours (``pid_namespace`` "own"; "host": in ours, for a
    container that shares it; "other": one level below, joined from another
    container), and started
    when the engine says the container started (``started_at``, seconds since the
    epoch). A pid the engine gave in a pid namespace other than ours (an engine in
    another container, a VM, another machine) names some other process here: this is
    where that is caught. Raises UnsafeTarget saying which part failed."""
    checked = check_pid(pid, container_id, proc=proc)
    levels = nspid(checked, proc)
    ours = len(nspid(os.getpid()))
    if levels[0] != checked:
        raise UnsafeTarget(
            f"refusing pid {checked}: /proc shows it as pid {levels[0]}, so /proc is not "
            "of this pid namespace."
        )
    depth = ours if pid_namespace == "host" else ours + 1
    if len(levels) != depth or (pid_namespace == "own" and levels[-1] != 1):
        where = {
            "own": "the first process of a pid namespace just below ours",
            "host": "a process of our own pid namespace (the container shares it)",
        }.get(pid_namespace, "a process of a pid namespace just below ours")
        raise UnsafeTarget(
            f"refusing pid {checked}: container {container_id[:12]}'s first process is "
            f"{where}, this one is not (its pid in each namespace: {levels})."
        )
    if started_at is not None:
        began = started_wall(checked, proc)
        # The boot time is whole seconds: a start reads up to 1 s early, never late.
        if began is None or not started_at - CREATED_BEFORE_START_S <= began <= started_at + 1:
            raise UnsafeTarget(
                f"refusing pid {checked}: it started at {began}, not when container "
                f"{container_id[:12]} started ({started_at:.3f}): not that run of it."
            )
    return checked


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
        names = []
        for kid in kids:
            with contextlib.suppress(UnsafeTarget):
                names.append(comm(kid, proc))
        found = f": {', '.join(sorted(set(names)))}" if names else ""
        raise UnsafeTarget(
            f"init process {init_pid} ({comm(init_pid, proc)}) has {len(kids)} children"
            f"{found}, so the container has no one main process: name the one to signal "
            "with process='NAME' (as /proc/PID/comm shows it; the top process of that "
            "name is signalled)."
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
