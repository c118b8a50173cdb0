"""A container's cgroups, v1 (one hierarchy per controller) or v2 (unified), found
from one of its processes. Faults that have no Docker API (or whose Docker API
would persist the change in the container's configuration) write these files and
restore the exact previous values."""

from __future__ import annotations

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
    import os

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
