"""A full snapshot of everything a fault could leave behind in the stack, for the
teardown and kill -9 tests to compare before and after: whole rule sets (not only
our own names), qdiscs, cgroup limits, container states, processes of ours on the
host, scratch directories, cgroups of ours and PostgreSQL's settings."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from pytest_chaos.faults.postgres import psql
from pytest_chaos.faults.qdisc import qdisc_session
from pytest_chaos.faults.resources import data_path
from pytest_chaos.targets.cgroup import ROOT, cgroup_of
from pytest_chaos.targets.netns import open_netns

CGROUP_FILES = {
    "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max"),
    "blkio": (
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
        "blkio.throttle.read_iops_device",
        "blkio.throttle.write_iops_device",
    ),
    "io": ("io.max",),
}
_DOCKER_DNS_PORT = re.compile(r"(127\.0\.0\.11:|sport )\d+")
#: Host processes that only a fault of ours starts.
OUR_PROGRAMS = ("stress-ng", "pytest_chaos.faults.delayer")


def service_state(service: Any) -> dict[str, Any]:
    docker_state = service.state()
    entry: dict[str, Any] = {
        "running": docker_state["Running"],
        "paused": docker_state["Paused"],
        "healthy": service.is_healthy(),
    }
    pid = service.init_pid()
    with open_netns(pid, service.name) as ns:
        # -s: stateless, without the counters that traffic changes. Docker's embedded
        # DNS gets new ports when a container restarts (a kill or max_connections
        # restarts it, legitimately): its rules are compared without them.
        ruleset = ns.run(["nft", "-s", "list", "ruleset"])
        entry["nft"] = _DOCKER_DNS_PORT.sub(r"\1<port>", ruleset)
    with qdisc_session(pid, service.name, "eth0") as (ipr, index):
        entry["qdiscs"] = sorted(
            (m.get_attr("TCA_KIND"), m["handle"], m["parent"]) for m in ipr.get_qdiscs(index=index)
        )
    cg = cgroup_of(service.main_pid())
    entry["cgroup"] = {
        f: cg.read(c, f) for c, files in CGROUP_FILES.items() for f in files if cg.has(c, f)
    }
    where = Path(data_path(service))
    where = where if where.is_dir() else where.parent
    entry["scratch"] = sorted(p.name for p in where.glob("pytest-chaos-*"))
    if "postgres" in str(service.container().attrs["Config"].get("Image", "")):
        entry["max_connections"] = psql(service, "SHOW max_connections")
    return entry


def our_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        if any(program in line for program in OUR_PROGRAMS) and "pytest " not in line:
            if "--serve" in line and not _in_our_cgroup(proc):
                continue  # a warm delayer waiting for a live pytest's next fault
            found.append(line)
    return sorted(found)


def _in_our_cgroup(proc: Path) -> bool:
    try:
        return "pytest-chaos-" in (proc / "cgroup").read_text()
    except OSError:
        return False


def our_cgroups() -> list[str]:
    return sorted(
        str(p)
        for base in (ROOT, ROOT / "unified", ROOT / "pids")
        if base.is_dir()
        for p in base.glob("pytest-chaos-*")
    )


def snapshot(project: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {
        name: service_state(project.service(name)) for name in sorted(project.service_names())
    }
    seen["host processes of ours"] = our_processes()
    seen["cgroups of ours"] = our_cgroups()
    return seen


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed, one line per difference, for an assertion message."""
    out = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        if isinstance(b, dict) and isinstance(a, dict):
            out += [f"{key}: {d}" for d in differences(b, a)]
        elif isinstance(b, str) and isinstance(a, str) and "\n" in b + a:
            changed = difflib.unified_diff(b.splitlines(), a.splitlines(), lineterm="", n=1)
            out += [f"{key}: {line}" for line in list(changed)[2:]]
        elif b != a:
            out.append(f"{key}: {b!r} -> {a!r}")
    return out
