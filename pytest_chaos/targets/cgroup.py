"""A container's cgroups, v1 (one hierarchy per controller) or v2 (unified), found
from one of its processes. Faults that have no Docker API (or whose Docker API
would persist the change in the container's configuration) write these files and
restore the exact previous values."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentProblem, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Cgroup:
    #: controller -> directory for v1; {"": directory} for v2.
    dirs: dict[str, Path]
    version: int

    def path(self, controller: str, name: str) -> Path:
        directory = self.dirs.get(controller if self.version == 1 else "")
        if directory is None:
            raise EnvironmentProblem(
                f"the {controller} cgroup controller is not available for this container "
                f"(cgroup v{self.version}); the kernel or Docker does not enable it."
            )
        return directory / name

    def read(self, controller: str, name: str) -> str:
        return self.path(controller, name).read_text().strip()

    def memory_usage_file(self) -> Path:
        """The file holding the memory the cgroup uses now (page cache included)."""
        return self.path(
            "memory", "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        )

    def memory_cache_bytes(self) -> int:
        """Page cache charged to the cgroup that the kernel can reclaim under a cap
        before it kills anything: cached files, not shared memory (tmpfs), which has
        nowhere to go without swap. v2's ``file - shmem``, v1's ``total_cache -
        total_shmem``."""
        stat = {}
        for line in self.read("memory", "memory.stat").splitlines():
            name, _, value = line.partition(" ")
            if value.isdigit():
                stat[name] = int(value)
        prefix = "total_" if self.version == 1 else ""
        cache = stat.get(prefix + ("cache" if self.version == 1 else "file"), 0)
        return max(0, cache - stat.get(prefix + "shmem", 0))

    def cpu_seconds(self) -> float:
        """CPU time the cgroup's processes have used so far, in seconds."""
        if self.version == 1:
            return int(self.read("cpuacct", "cpuacct.usage")) / 1e9
        for line in self.read("cpu", "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise EnvironmentProblem("cpu.stat has no usage_usec: the kernel is too old for v2.")

    def has(self, controller: str, name: str) -> bool:
        try:
            return self.path(controller, name).exists()
        except EnvironmentProblem:
            return False


def cgroup_of(pid: int, root: Path = ROOT, proc: Path = Path("/proc")) -> Cgroup:
    """The cgroups of ``pid``: the v1 controllers' directories where v1 has them
    (hybrid hosts like this one), else the v2 directory."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except FileNotFoundError:
        raise UnsafeTarget(f"process {pid} is gone; is the service running?") from None
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if not controllers:
            unified = (
                root / rel if (root / "cgroup.controllers").exists() else root / "unified" / rel
            )
            continue
        for controller in controllers.split(","):
            controller = controller.removeprefix("name=")
            for mount in (controller, controllers):
                if (root / mount / rel).is_dir():
                    v1[controller] = root / mount / rel
                    break
    if "memory" in v1 or "cpu" in v1:
        return Cgroup(v1, 1)
    if unified is not None and (unified / "cgroup.controllers").exists():
        return Cgroup({"": unified}, 2)
    raise EnvironmentProblem(f"cannot find the cgroups of process {pid} under {root}.")


def block_device(path: str | Path) -> tuple[int, int]:
    """major:minor of the whole disk holding ``path`` (throttling applies to disks,
    not partitions)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sys_dev = Path(f"/sys/dev/block/{major}:{minor}")
    if not sys_dev.exists():
        raise EnvironmentProblem(
            f"{path} is not on a block device ({major}:{minor}: overlay or tmpfs?); "
            "pass the path of a directory on a disk."
        )
    if (sys_dev / "partition").exists():
        parent = (sys_dev.resolve().parent / "dev").read_text().strip()
        major, minor = (int(x) for x in parent.split(":"))
    return major, minor


# -- cgroups of our own, to hold the processes a fault starts --------------------------


def own_cgroup_path(name: str, root: Path = ROOT) -> Path:
    """Where a cgroup of ours called ``name`` goes: in the unified (v2) hierarchy where
    there is one (mounted at the root, or beside v1 as ``unified``), else in v1's pids
    hierarchy. It only groups processes; it limits nothing."""
    for base in (root, root / "unified", root / "pids"):
        if (base / "cgroup.procs").exists():
            return base / name
    raise EnvironmentProblem(
        f"no cgroup hierarchy to hold our own processes under {root} (neither v2 nor v1 pids)."
    )


class OwnCgroup:
    """A cgroup we create to hold the processes a fault starts, so that whatever is
    in it is ours to stop, even after pytest died before it learnt their pids: the
    cgroup's path is journaled before any process is started in it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def create(self) -> None:
        try:
            self.path.mkdir(mode=0o755)
        except PermissionError:
            raise EnvironmentProblem(
                f"cannot create {self.path}: run pytest as root (sudo)."
            ) from None

    def exec_prefix(self) -> list[str]:
        """An argv prefix that moves the process into this cgroup, then runs the rest."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(word) for word in text.split()]

    def stop_all(self, grace: float = 10.0) -> int:
        """SIGTERM every process in the cgroup, SIGKILL those left after ``grace``
        seconds; returns how many there were. Each pid is pinned (pidfd) and checked
        to be still in this cgroup before it is signalled."""
        found = len(self.pids())
        began = time.monotonic()
        while pids := self.pids():
            waited = time.monotonic() - began
            if waited > 2 * grace:
                raise EnvironmentProblem(
                    f"processes {pids} in {self.path} outlived SIGKILL for {grace:g} s."
                )
            for pid in pids:
                self._signal(pid, signal.SIGKILL if waited > grace else signal.SIGTERM)
            time.sleep(0.02)  # poll interval while they exit
        return found

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # exited already
            return
        try:
            # Checked after pinning: a number reused by another process fails this.
            if f":/{self.path.name}\n" in Path(f"/proc/{pid}/cgroup").read_text():
                signal.pidfd_send_signal(pidfd, sig)
        except (ProcessLookupError, FileNotFoundError):
            pass
        finally:
            os.close(pidfd)

    def remove(self) -> bool:
        """Remove the (emptied) cgroup; False if it was not there."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return False
        return True


# -- a tree of cgroups, killed whole -------------------------------------------------


def kill_cgroup_tree(top: Path, name: str, timeout: float = 15.0) -> int:
    """SIGKILL every process in cgroup ``top`` and below, then remove those cgroups;
    how many processes there were. ``name`` (the cgroup's own, unique to the run) must
    appear in a process's /proc/<pid>/cgroup, read after its pid is pinned."""
    if not top.is_dir():
        return 0
    groups = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    groups.append(top)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := {pid for g in groups for pid in cgroup_procs(g)}:
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"processes {sorted(pids)} in {top} outlived SIGKILL.")
        for pid in pids - seen:
            _kill_if_in(pid, name)
        seen |= pids
        time.sleep(0.01)  # poll interval while the killed processes exit
    for group in groups:
        # A killed process not reaped yet (a zombie) keeps its cgroup busy a moment.
        while group.exists():
            try:
                group.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"{group} stayed busy after its processes died."
                    ) from None
                time.sleep(0.01)  # poll interval while the zombies are reaped
    return len(seen)


def cgroup_procs(group: Path) -> list[int]:
    try:
        return [int(w) for w in (group / "cgroup.procs").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _kill_if_in(pid: int, name: str) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # exited already
        return
    try:
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        if f"/{name}/" in groups or f"/{name}\n" in groups:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass
    finally:
        os.close(pidfd)


def cgroup_roots() -> list[Path]:
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, *_ = line.split()
        if kind in ("cgroup", "cgroup2"):
            roots.append(Path(where))
    return roots
