"""A local swarm torn down from its journal data alone (after ``kill -9`` of pytest, by
the next session or ``--chaos-cleanup``; and by the cluster itself when it goes down):
its engines and everything they ran killed through their cgroups, its namespaces and
its files removed. Everything of it is named after its run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..registry import undoer
from .cgroup import cgroup_roots, kill_cgroup_tree

#: Where nodes keep their data (images, volumes) and their run-time files.
STATE_DIR = Path("/var/lib/pytest-chaos/swarm")
RUN_DIR = Path("/run/pytest-chaos/swarm")


@undoer("swarm-cluster")
def teardown(data: dict[str, Any]) -> str:
    """Stop every engine of the cluster and whatever it ran, remove its cgroups,
    namespaces and files. A process is signalled only through a pidfd, after checking
    that it is in one of the cluster's cgroups (all named after the run)."""
    said: list[str] = []
    nodes = list(data.get("nodes", []))
    # The engines, their containerd and shims first (they live in the engines' own
    # cgroups): nothing may start a task again while the tasks are stopped.
    engines = sum(
        kill_cgroup_tree(Path(n["own_cgroup"]), Path(n["own_cgroup"]).name) for n in nodes
    )
    tasks = sum(
        kill_cgroup_tree(base / n["cgroup_parent"], n["cgroup_parent"])
        for n in nodes
        for base in cgroup_roots()
    )
    if engines or tasks:
        said.append(f"stopped {engines} engine process(es) and {tasks} task process(es)")
    namespaces = [str(n["netns"]) for n in nodes] + ([str(data["hub"])] if data.get("hub") else [])
    removed = [ns for ns in namespaces if _delete_netns(ns)]
    if removed:
        said.append(f"removed namespaces {', '.join(removed)}")
    for key in ("run_dir", "state_dir"):
        path = Path(str(data.get(key, "")))
        if data.get(key) and path.exists() and _ours(path):
            shutil.rmtree(path, ignore_errors=True)
            said.append(f"removed {path}")
    return "; ".join(said) or "nothing of the swarm was left"


def _ours(path: Path) -> bool:
    return path.parent in (STATE_DIR, RUN_DIR) and path.name.isalnum()


def _delete_netns(name: str) -> bool:
    if not (Path("/run/netns") / name).exists():
        return False
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=15, check=False)
    return True


def netns_names() -> list[str]:
    """Every network namespace name of a local swarm on this machine (ours or not)."""
    try:
        return sorted(p.name for p in Path("/run/netns").iterdir() if p.name.startswith("pcs-"))
    except FileNotFoundError:
        return []
