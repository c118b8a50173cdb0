"""The /proc and cgroup counters a session reads where BPF cannot load: what a
service's own namespace and cgroups tell without probes (coarser: counts and means,
no timelines)."""

from __future__ import annotations

from pathlib import Path


def proc_tcp_counters(pid: int) -> dict[str, int]:
    """The Tcp and TcpExt counters of ``pid``'s network namespace."""
    counters: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, keys = header.split(":", 1)
            _, nums = values.split(":", 1)
            if prefix in ("Tcp", "TcpExt"):
                for key, value in zip(keys.split(), nums.split(), strict=False):
                    counters[f"{prefix}.{key}"] = int(value)
    return counters


def tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def oom_kills(memory_cgroup: Path) -> int:
    for name in ("memory.oom_control", "memory.events"):
        try:
            text = (memory_cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def schedstat(pids: set[int]) -> tuple[int, int]:
    """Run-queue wait (ns) and timeslices summed over every thread of ``pids``."""
    waited = slices = 0
    for pid in pids:
        for task in tasks(pid):
            try:
                _, wait_ns, count = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            waited += int(wait_ns)
            slices += int(count)
    return waited, slices


def vmstat_pgalloc() -> int:
    total = 0
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key.startswith("pgalloc_"):
            total += int(value)
    return total
