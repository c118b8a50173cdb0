"""Resource faults on a container's cgroups: a memory cap the OOM killer enforces,
a CPU quota, block-I/O throttling, and I/O contention from a stress-ng process of
ours. Limits are written to the cgroup files (v1 or v2) rather than through
``docker update``, which would persist them in the container's configuration; the
exact previous values are restored, in the order the kernel accepts."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ChaosError,
    ConfigurationError,
    EnvironmentProblem,
    FaultError,
    UnsafeTarget,
)
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, fault, sweeper, undoer
from ..targets import linux
from ..targets.cgroup import OwnCgroup, block_device, own_cgroup_path
from ..targets.compose import Service
from ..units import parse_duration, parse_size
from .base import Effect, FaultHandle, dead_runs_containers, journaled, run_of

if TYPE_CHECKING:
    from ..chaos import Chaos

UNLIMITED_V1 = "9223372036854771712"
_OOM_LINE = re.compile(
    r"oom-kill:.*task_memcg=(?P<memcg>\S+?),task=(?P<comm>[^,]+),pid=(?P<pid>\d+)"
)


@dataclass
class OomVictim:
    pid: int
    process: str


@dataclass
class MemoryHandle(FaultHandle):
    limit_bytes: int = 0
    #: The limit before the cap (2**63 - 1 or v1's page-rounded maximum: none).
    limit_before: int = 0
    usage_at_start: int = 0
    #: Of ``usage_at_start``, the page cache the kernel reclaims before it kills.
    cache_at_start: int = 0
    cgroup_version: int = 1
    #: (time.monotonic(), bytes) of the cgroup's usage, sampled while the cap is in
    #: force, until the cgroup goes (the container exited).
    samples: list[tuple[float, int]] = field(default_factory=list)
    _container_id: str = ""
    _kmsg: int | None = None
    _victims: list[OomVictim] = field(default_factory=list)
    _usage_file: Path | None = None
    _limit_file: Path | None = None

    def describe(self) -> str:
        return f"memory cap {self.target} {self.limit_bytes // 2**20} MiB"

    def usage_bytes(self) -> int | None:
        """What the container's memory cgroup holds now (page cache included), or None
        once the cgroup is gone (the container exited; a restart makes a new one)."""
        return _read_int(self._usage_file)

    @property
    def peak_bytes(self) -> int:
        return max((b for _, b in self.samples), default=self.usage_at_start)

    def reached(self, fraction: float) -> float | None:
        """When usage first reached ``fraction`` of the cap (monotonic), or None."""
        return next((t for t, b in self.samples if b >= fraction * self.limit_bytes), None)

    def _sample(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            usage = self.usage_bytes()
            if usage is None:
                return
            self.samples.append((time.monotonic(), usage))
            stop.wait(interval)

    def limit_in_force(self) -> int | None:
        """The memory limit the container's cgroup has now (None: no cgroup). A
        restarted container comes back in a fresh cgroup with its configured limit."""
        return _read_int(self._limit_file)

    def oom_victims(self) -> list[OomVictim]:
        """Processes of this container the OOM killer chose since the cap was set
        (read from the kernel log)."""
        if self._kmsg is not None:
            for line in _read_kmsg(self._kmsg):
                match = _OOM_LINE.search(line)
                if match and self._container_id in match.group("memcg"):
                    self._victims.append(OomVictim(int(match.group("pid")), match.group("comm")))
        return list(self._victims)

    def measure_effect(self) -> Effect:
        usage = self.usage_bytes()
        if usage is not None:
            self.samples.append((time.monotonic(), usage))
        kills = len(self.oom_victims())
        peak = self.peak_bytes
        # Near the cap, the kernel reclaims and stalls the container's allocations.
        took = kills > 0 or peak >= 0.9 * self.limit_bytes
        return Effect(
            took,
            f"usage peaked at {peak / 2**20:.0f} MiB of the {self.limit_bytes / 2**20:.0f} MiB "
            f"cap; {kills} OOM kill(s)",
        )

    def figures(self) -> dict[str, float | int | str]:
        victims = self.oom_victims()
        out = {
            **super().figures(),
            "limit_bytes": self.limit_bytes,
            "usage_at_start_bytes": self.usage_at_start,
            "cache_at_start_bytes": self.cache_at_start,
            "peak_bytes": self.peak_bytes,
            "cgroup_version": self.cgroup_version,
            "oom_kills": len(victims),
        }
        if victims:
            out["oom_victim"] = f"{victims[0].process} (pid {victims[0].pid})"
        return out


@dataclass
class CpuHandle(FaultHandle):
    cpus: float = 0.0
    cgroup_version: int = 1
    _stat_file: Path | None = None
    _before: dict[str, int] = field(default_factory=dict)

    def throttling(self) -> tuple[int, int]:
        """(periods throttled, periods elapsed) since the quota was set, from the
        cgroup's cpu.stat: a throttled period is one where the quota ran out."""
        now = _stat_counters(self._stat_file)
        return (
            now.get("nr_throttled", 0) - self._before.get("nr_throttled", 0),
            now.get("nr_periods", 0) - self._before.get("nr_periods", 0),
        )

    def measure_effect(self) -> Effect | None:
        if self._stat_file is None:
            return None
        throttled, periods = self.throttling()
        share = f" ({100 * throttled / periods:.0f}%)" if periods else ""
        return Effect(throttled > 0, f"{throttled} of {periods} periods throttled{share}")

    def describe(self) -> str:
        return f"cpu quota {self.target} {self.cpus:g} CPU"

    def figures(self) -> dict[str, float | int | str]:
        return {**super().figures(), "cpus": self.cpus, "cgroup_version": self.cgroup_version}


@dataclass
class IoHandle(FaultHandle):
    device: str = ""
    limits: dict[str, int] = field(default_factory=dict)
    _stat_file: Path | None = None
    _before: dict[str, int] = field(default_factory=dict)

    def transferred(self) -> dict[str, int]:
        """Bytes done on the throttled device since the limit was set, by direction:
        {"read": bytes, "write": bytes}."""
        now = _device_io(self._stat_file, self.device)
        return {k: now.get(k, 0) - self._before.get(k, 0) for k in now}

    def measure_effect(self) -> Effect | None:
        if self._stat_file is None:
            return None
        moved = self.transferred()
        directions = sorted({k.split("_")[0] for k in self.limits})
        done = {d: moved.get(d, 0) for d in directions}
        said = ", ".join(f"{v / 2**20:.1f} MiB {d}" for d, v in done.items())
        return Effect(any(v > 0 for v in done.values()), f"{said} on {self.device} under the limit")

    def describe(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.limits.items())
        return f"io throttle {self.target} {self.device} {what}"

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "device": self.device,
            **{f"limit_{k}": v for k, v in self.limits.items()},
        }


@dataclass
class ContentionHandle(FaultHandle):
    workers: int = 0
    pid: int = 0
    directory: str = ""
    _group: OwnCgroup | None = None

    def measure_effect(self) -> Effect | None:
        if self._group is None:
            return None
        written = 0
        for pid in self._group.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                    if line.startswith("write_bytes:"):
                        written += int(line.split()[1])
        return Effect(written > 0, f"stress-ng wrote {written / 2**20:.1f} MiB to the disk")

    def describe(self) -> str:
        return f"io contention {self.workers} stress-ng workers in {self.directory}"


# -- writing cgroup files with an exact undo -------------------------------------------


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except PermissionError:
        raise EnvironmentProblem(f"cannot write {path}: run pytest as root (sudo).") from None
    except OSError as exc:
        raise FaultError(f"the kernel refused {value!r} for {path}: {exc.strerror}.") from None


def _restore(writes: Sequence[tuple[str, str]]) -> list[str]:
    """Write (path, value) pairs in order; skip cgroups that no longer exist (the
    container stopped, or restarted into a fresh cgroup with its configured limits)."""
    done = []
    for path, value in writes:
        if Path(path).exists():
            _write(Path(path), value)
            done.append(f"{Path(path).name}={value}")
    return done


@undoer("cgroup")
def _undo_cgroup(data: dict[str, Any]) -> str:
    done = _restore([(str(p), str(v)) for p, v in data["restore"]])
    return "restored " + ", ".join(done) if done else "its cgroup is gone; nothing to restore"


@contextmanager
def _cgroup_change(
    service: Service,
    handle: FaultHandle,
    apply: Sequence[tuple[Path, str]],
    restore: Sequence[tuple[Path, str]],
) -> Iterator[None]:
    restore_data = [[str(p), v] for p, v in restore]
    # A cgroup limit lives in the kernel only: a crash of the machine takes it along.
    with journaled(
        service, "cgroup", handle.describe(), {"restore": restore_data}, durable=False
    ) as undone:
        try:
            for path, value in apply:
                _write(path, value)
            handle.applied_at = time.monotonic()
            yield
        finally:
            handle.keep_effect()
            _restore([(str(p), v) for p, v in restore])
            handle.lifted_at = time.monotonic()
            handle.undone_at = time.monotonic()
            undone()


# -- memory -----------------------------------------------------------------------------


@contextmanager
def memory_cap(
    service: Service,
    limit: int | str,
    *,
    allow_swap: bool = False,
    recovery_timeout: float | str = 60.0,
) -> Iterator[MemoryHandle]:
    """Cap ``service``'s memory at ``limit`` (swap included unless ``allow_swap``), so
    the OOM killer acts when it grows past it. ``handle.oom_victims()`` tells which
    processes it killed. Refused when the cap is below what the container uses now,
    not counting the page cache the kernel would reclaim first. Undo: the limit as it
    was, then the service running and healthy again (an OOM kill may have ended or
    restarted it), within ``recovery_timeout``; ``restored_by`` says who brought it
    back."""
    timeout_s = parse_duration(recovery_timeout, name="recovery_timeout")
    limit_bytes = parse_size(limit, name="memory limit")
    if limit_bytes < 4 * 2**20:
        raise ConfigurationError(f"a memory cap below 4 MiB cannot run anything, got {limit!r}.")
    cg = service.cgroup()
    usage_file = cg.memory_usage_file()
    usage = int(usage_file.read_text())
    if cg.version == 1:
        limit_file = cg.path("memory", "memory.limit_in_bytes")
        swap_file = cg.path("memory", "memory.memsw.limit_in_bytes")
        before = limit_file.read_text().strip()
        if swap_file.exists() and not allow_swap:
            swap_before = swap_file.read_text().strip()
            apply = _v1_memory(limit_file, swap_file, limit_bytes, limit_bytes, int(before))
            restore = _v1_memory(limit_file, swap_file, int(before), int(swap_before), limit_bytes)
        else:
            apply = [(limit_file, str(limit_bytes))]
            restore = [(limit_file, before)]
    else:
        limit_file = cg.path("memory", "memory.max")
        swap_file = cg.path("memory", "memory.swap.max")
        before = limit_file.read_text().strip()
        apply = [(limit_file, str(limit_bytes))]
        restore = [(limit_file, before)]
        if swap_file.exists() and not allow_swap:
            apply.append((swap_file, "0"))
            restore.append((swap_file, swap_file.read_text().strip()))
    cache = cg.memory_cache_bytes()
    in_use = usage - cache
    if limit_bytes <= in_use:
        raise ConfigurationError(
            f"a memory cap of {limit_bytes // 2**20} MiB is below what {service.name} uses now "
            f"({in_use // 2**20} MiB, page cache not counted): the OOM killer would act at "
            "once. Choose more than its current use."
        )
    handle = MemoryHandle(
        kind="memory",
        target=service.label,
        limit_bytes=limit_bytes,
        limit_before=_as_int(before),
        usage_at_start=usage,
        cache_at_start=cache,
        cgroup_version=cg.version,
        _container_id=service.container_id,
        _kmsg=_open_kmsg(),
        _usage_file=usage_file,
        _limit_file=limit_file,
    )
    stop_sampling = threading.Event()
    sampler = threading.Thread(
        target=handle._sample, args=(stop_sampling, 0.02), name="memory-cap-sampler", daemon=True
    )
    restarts_before = service.restart_count()
    first_pid, started_before = service.init_pid(), service.started_at()
    try:
        with _cgroup_change(service, handle, apply, restore):
            sampler.start()
            yield handle
    finally:
        stop_sampling.set()
        if sampler.is_alive():
            sampler.join(1.0)
        handle.oom_victims()
        if handle._kmsg is not None:
            os.close(handle._kmsg)
            handle._kmsg = None
    # The limit is lifted; an OOM kill may have stopped or restarted the service: its
    # victim was the first process, or the only child of an init (tini) that then
    # ends. Docker's state says running and healthy for a moment after (CI:
    # "still-running" for a redis the OOM killer had ended, and then not healthy).
    if handle.oom_victims():
        service.await_exit_seen(
            first_pid, started_before, dies_within=OOM_INIT_EXIT_S, seen_within=OOM_EXIT_SEEN_S
        )
    handle.restored_by = service.ensure_running_and_healthy(
        timeout=timeout_s, restarts_before=restarts_before, put_off=handle.put_off
    )
    handle.undone_at = time.monotonic()


#: After an OOM kill, how long the container's first process may take to end (an init
#: whose only child was the victim ends at once), and Docker to see that it did.
OOM_INIT_EXIT_S = 1.0
OOM_EXIT_SEEN_S = 5.0


def _stat_counters(path: Path | None) -> dict[str, int]:
    """A flat "key value" cgroup file (cpu.stat) as numbers; {} if unreadable."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _device_io(path: Path | None, device: str) -> dict[str, int]:
    """Bytes and I/Os done on ``device`` so far: v1's blkio.throttle.io_service_bytes
    ("8:0 Read N") or v2's io.stat ("8:0 rbytes=N wbytes=N rios=N wios=N")."""
    out = {"read": 0, "write": 0}
    if path is None:
        return out
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != device:
            continue
        if len(words) == 3 and words[1] in ("Read", "Write"):
            out[words[1].lower()] = int(words[2])
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key in ("rbytes", "wbytes") and value.isdigit():
                out["read" if key == "rbytes" else "write"] = int(value)
    return out


def _read_int(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return _as_int(path.read_text())
    except OSError:
        return None


def _as_int(text: str) -> int:
    """A cgroup file's number; v2's "max" (no limit) as 2**63 - 1."""
    text = text.strip()
    return 2**63 - 1 if text == "max" else int(text)


def _v1_memory(
    limit_file: Path, swap_file: Path, limit: int, swap: int, current_limit: int
) -> list[tuple[Path, str]]:
    """Writes that set the v1 memory and memory+swap limits, in an order that keeps
    memsw >= limit at every step (the kernel refuses otherwise)."""
    if limit <= current_limit:
        return [(limit_file, str(limit)), (swap_file, str(swap))]
    return [(swap_file, str(swap)), (limit_file, str(limit))]


def _open_kmsg() -> int | None:
    """The kernel log, positioned at its end, or None where it cannot be read."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def _read_kmsg(fd: int) -> list[str]:
    lines = []
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            break
        except OSError:  # EPIPE: overwritten records; keep reading what follows
            continue
        if not record:
            break
        lines.append(record.decode("utf-8", "replace").split(";", 1)[-1].strip())
    return lines


# -- cpu --------------------------------------------------------------------------------


@contextmanager
def cpu_quota(service: Service, cpus: float, *, period_us: int = 100_000) -> Iterator[CpuHandle]:
    """Let ``service`` use at most ``cpus`` CPUs (CFS quota), e.g. 0.5."""
    cpus = check_cpus(cpus)
    if not 1000 <= period_us <= 1_000_000:
        raise ConfigurationError(f"period_us must be between 1000 and 1000000, got {period_us}.")
    quota = max(1000, round(cpus * period_us))
    cg = service.cgroup()
    if cg.version == 1:
        quota_file = cg.path("cpu", "cpu.cfs_quota_us")
        period_file = cg.path("cpu", "cpu.cfs_period_us")
        apply = [(quota_file, "-1"), (period_file, str(period_us)), (quota_file, str(quota))]
        restore = [
            (quota_file, "-1"),
            (period_file, period_file.read_text().strip()),
            (quota_file, quota_file.read_text().strip()),
        ]
    else:
        max_file = cg.path("cpu", "cpu.max")
        apply = [(max_file, f"{quota} {period_us}")]
        restore = [(max_file, max_file.read_text().strip())]
    handle = CpuHandle(kind="cpu", target=service.label, cpus=cpus, cgroup_version=cg.version)
    handle._stat_file = cg.path("cpu", "cpu.stat")
    handle._before = _stat_counters(handle._stat_file)
    with _cgroup_change(service, handle, apply, restore):
        yield handle


def check_cpus(cpus: float | int | str) -> float:
    try:
        value = float(cpus)
    except (TypeError, ValueError):
        raise ConfigurationError(f"cpus must be a number such as 0.5, not {cpus!r}.") from None
    limit = os.cpu_count() or 1
    if isinstance(cpus, bool) or not 0.01 <= value <= limit:
        raise ConfigurationError(
            f"cpus must be between 0.01 and {limit} (this machine's CPUs), got {cpus!r}."
        )
    return value


# -- block I/O --------------------------------------------------------------------------

_IO_KEYS = ("read_bps", "write_bps", "read_iops", "write_iops")
_V2_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}


def data_path(service: Service) -> str:
    """Where the service keeps its data, as a path of this machine: its first volume
    or bind mount, else Docker's own data root. The engine names these paths in its
    own mount namespace; each is used only once it is proved to be, here, the very
    directory the container has mounted (the same file seen through the container's
    own root), never by its name alone: a remote engine's volume path names some
    other directory here."""
    pid = service.init_pid()
    for mount in service.pinned().get("Mounts") or []:
        source, inside = mount.get("Source"), mount.get("Destination")
        if not source or not inside:
            continue
        if _same_file(str(source), f"/proc/{pid}/root{inside}"):
            return str(source)
        raise UnsafeTarget(
            f"the engine says {service.label}'s {inside} is {source}, but {source} on this "
            "machine is not the directory the container has mounted there (the engine's "
            "paths are not this machine's): pass path= a directory of this machine."
        )
    root = str(service.project.client.info().get("DockerRootDir", "/var/lib/docker"))
    # The container's runtime (its parent, a containerd shim) sees the engine's paths.
    if _same_file(root, f"/proc/{linux.parent(pid)}/root{root}"):
        return root
    raise UnsafeTarget(
        f"{service.label} has no volume, and the engine's data root {root} is not this "
        "machine's directory of that name: pass path= a directory of this machine."
    )


def _same_file(ours: str, theirs: str) -> bool:
    """Whether two paths name one file (device and inode), as far as both exist."""
    try:
        a, b = os.stat(ours), os.stat(theirs)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def io_throttle(
    service: Service, *, path: str | None = None, **limits: int | str
) -> Iterator[IoHandle]:
    """Throttle ``service``'s block I/O on the disk holding ``path`` (default: its
    data volume): ``read_bps``, ``write_bps`` (bytes/s, e.g. '1m'), ``read_iops``,
    ``write_iops``. On cgroup v1 only direct and fsync'd writes are throttled, not
    buffered ones (the kernel's writeback is charged to no one)."""
    unknown = set(limits) - set(_IO_KEYS)
    if unknown or not limits:
        raise ConfigurationError(
            f"io_throttle takes one or more of {', '.join(_IO_KEYS)}; got {sorted(limits)}."
        )
    values = {
        k: parse_size(v, name=k) if k.endswith("bps") else _positive_int(v, k)
        for k, v in limits.items()
    }
    major, minor = block_device(path or data_path(service))
    device = f"{major}:{minor}"
    cg = service.cgroup()
    apply: list[tuple[Path, str]] = []
    restore: list[tuple[Path, str]] = []
    if cg.version == 1:
        for key, value in values.items():
            file = cg.path("blkio", f"blkio.throttle.{key}_device")
            previous = _device_line(file.read_text(), device)
            apply.append((file, f"{device} {value}"))
            restore.append((file, f"{device} {previous.split()[1] if previous else 0}"))
    else:
        file = cg.path("io", "io.max")
        previous = _device_line(file.read_text(), device)
        apply.append(
            (file, device + " " + " ".join(f"{_V2_KEYS[k]}={v}" for k, v in values.items()))
        )
        restore.append(
            (file, previous or device + " " + " ".join(f"{k}=max" for k in _V2_KEYS.values()))
        )
    handle = IoHandle(kind="io", target=service.label, device=device, limits=values)
    if cg.version == 1:
        handle._stat_file = cg.path("blkio", "blkio.throttle.io_service_bytes")
    else:
        handle._stat_file = cg.path("io", "io.stat")
    handle._before = _device_io(handle._stat_file, device)
    with _cgroup_change(service, handle, apply, restore):
        yield handle


def _device_line(text: str, device: str) -> str | None:
    for line in text.splitlines():
        if line.split()[:1] == [device]:
            return line.strip()
    return None


def _positive_int(value: int | str, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}.") from None
    if isinstance(value, bool) or number <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}.")
    return number


# -- I/O contention ----------------------------------------------------------------------


@contextmanager
def io_contention(
    service: Service,
    *,
    workers: int = 2,
    path: str | None = None,
    bytes_per_worker: int | str = "256m",
) -> Iterator[ContentionHandle]:
    """Compete for the disk holding ``service``'s data: ``workers`` stress-ng
    processes of ours writing and reading files there (with fsync), until undone.

    Crash-safe without a window: the journal entry names the scratch directory and a
    cgroup of ours before either exists, and stress-ng is started inside that cgroup,
    so a cleanup finds its processes whenever pytest died."""
    if not 1 <= workers <= 16:
        raise ConfigurationError(f"workers must be between 1 and 16, got {workers}.")
    size = parse_size(bytes_per_worker, name="bytes_per_worker")
    stress = shutil.which("stress-ng")
    if stress is None:
        raise EnvironmentProblem("stress-ng is not installed: apt-get install stress-ng.")
    # The contention is on this machine's disks: the service's only if its engine
    # runs it here (refused in one sentence otherwise, even with a path given).
    service.init_pid()
    base = Path(path or data_path(service))
    parent = base if base.is_dir() else base.parent
    journal = service.project.journal
    name = f"{OWN_PREFIX}{journal.run_id if journal else 'norun'}-{secrets.token_hex(4)}"
    directory = parent / name
    group = OwnCgroup(own_cgroup_path(name))
    handle = ContentionHandle(
        kind="io-contention",
        target=service.label,
        workers=workers,
        directory=str(directory),
        _group=group,
    )
    argv = [
        *group.exec_prefix(),
        stress,
        "--hdd",
        str(workers),
        "--hdd-bytes",
        str(size),
        "--hdd-opts",
        "fsync",
        "--temp-path",
        str(directory),
        "--timeout",
        "3600s",
        "--quiet",
    ]
    data = {"directory": str(directory), "cgroup": str(group.path)}
    with journaled(service, "stress-ng", handle.describe(), data) as undone:
        proc: subprocess.Popen[bytes] | None = None
        try:
            directory.mkdir(mode=0o700)
            group.create()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            handle.pid = proc.pid
            # In force once its workers run; bad options make it exit instead.
            deadline = time.monotonic() + 10
            while len(group.pids()) < workers + 1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = proc.stderr.read().decode().strip() if proc.stderr else ""
                    raise FaultError(f"stress-ng did not start its workers: {said or 'no output'}")
                time.sleep(0.02)  # poll interval while stress-ng forks its workers
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            handle.lifted_at = time.monotonic()
            _stop_contention(group, directory)
            if proc is not None:
                proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
            handle.undone_at = time.monotonic()
            undone()


def _stop_contention(group: OwnCgroup, directory: Path) -> str:
    """Stop every process in our cgroup, remove it and the scratch directory."""
    stopped = group.stop_all()
    existed = group.remove()
    removed = directory.exists()
    shutil.rmtree(directory, ignore_errors=True)
    said = [f"stopped {stopped} stress-ng process(es)" if stopped else "no stress-ng was running"]
    if existed:
        said.append(f"removed cgroup {group.path}")
    if removed:
        said.append(f"removed {directory}")
    return "; ".join(said)


OWN_PREFIX = "pytest-chaos-io-"


#: cgroup v1's "no limit" for memory: the largest page count, in bytes (x86-64, 4 KiB).
V1_UNLIMITED = "9223372036854771712"


def configured_limits(host_config: dict[str, Any], version: int = 2) -> dict[str, str]:
    """What the engine was told to hold a container to, as the cgroup files read (v2:
    memory.max, memory.swap.max, cpu.max; v1: memory.limit_in_bytes,
    memory.memsw.limit_in_bytes, cpu.cfs_quota_us): the values a limit of ours
    replaced."""
    memory = int(host_config.get("Memory") or 0)
    swap = int(host_config.get("MemorySwap") or 0)
    period = int(host_config.get("CpuPeriod") or 0) or 100000
    nano = int(host_config.get("NanoCpus") or 0)
    quota = int(host_config.get("CpuQuota") or 0)
    if nano:
        period = 100000
        quota = nano * period // 10**9
    # The engine gives as much swap as memory unless told otherwise; -1: unlimited.
    total = 0 if not memory or swap < 0 else (swap or 2 * memory)
    if version == 1:
        return {
            "memory.limit_in_bytes": str(memory) if memory else V1_UNLIMITED,
            "memory.memsw.limit_in_bytes": str(total) if total else V1_UNLIMITED,
            "cpu.cfs_quota_us": str(quota) if quota > 0 else "-1",
        }
    return {
        "memory.max": str(memory) if memory else "max",
        "memory.swap.max": str(total - memory) if total else "max",
        "cpu.max": f"{quota} {period}" if quota > 0 else f"max {period}",
    }


@sweeper("cgroup-limit")
def _sweep_limits(dead: DeadRuns) -> list[str]:
    """Say which containers of a project a dead run touched hold a cgroup limit
    (memory, swap, CPU, block I/O) other than the one their engine was told (their
    HostConfig): nothing on a limit proves who wrote it (a live run of another journal
    may hold it now), so it is named with the engine's value, not changed."""
    from ..targets.cgroup import cgroup_of
    from ..targets.engine import prove

    said = []
    for name, container in dead_runs_containers(dead):
        try:
            cg = cgroup_of(prove(container.attrs))
            host_config = container.attrs.get("HostConfig") or {}
            for file, expected in configured_limits(host_config, cg.version).items():
                path = cg.path("memory" if file.startswith("memory") else "cpu", file)
                found = path.read_text().strip() if path.exists() else expected
                if not _same_limit(found, expected):
                    said.append(
                        f"left {name}: {file} is {found} where its engine set {expected} (a "
                        "dead run touched this project; if the limit was its own, write "
                        f"{expected} back)"
                    )
            if not any(host_config.get(key) for key in _BLKIO_KEYS):
                for io_file in _io_files(cg):
                    rules = io_file.read_text().strip() if io_file.exists() else ""
                    if rules:
                        said.append(
                            f"left {name}: {io_file.name} holds {rules!r} where its engine set "
                            "none (a dead run touched this project; if the rule was its own, "
                            "lift it)"
                        )
        except (ChaosError, OSError) as exc:  # it went, or is not ours to read
            said.append(f"skipped {name}: {exc}")
    return said


def _io_files(cg: Any) -> list[Path]:
    if cg.version == 2:
        return [cg.path("io", "io.max")]
    return [cg.path("blkio", f"blkio.throttle.{key}_device") for key in _V1_IO_KEYS]


_V1_IO_KEYS = ("read_bps", "write_bps", "read_iops", "write_iops")
_BLKIO_KEYS = (
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
)


def _same_limit(found: str, expected: str) -> bool:
    """Whether a limit read back is the one set (the kernel rounds a byte count down to
    whole pages)."""
    if found == expected:
        return True
    try:
        return int(found) // 4096 == int(expected) // 4096
    except ValueError:
        return False


@sweeper("own-cgroup")
def _sweep_own(dead: DeadRuns) -> list[str]:
    """Our cgroups of the dead runs (named after the run) emptied and removed, and
    their scratch directories beside the data of the projects those runs touched."""
    said = []
    base = own_cgroup_path(OWN_PREFIX).parent
    for group_path in sorted(base.glob(f"{OWN_PREFIX}*")):
        run = run_of(group_path.name, OWN_PREFIX)
        if run is None or run not in dead.runs:
            continue
        group = OwnCgroup(group_path)
        stopped = group.stop_all()
        group.remove()
        said.append(f"swept cgroup {group_path} and the {stopped} process(es) in it (run {run})")
    from ..targets.compose import ComposeProject

    for name, container in dead_runs_containers(dead):
        project = ComposeProject(name.split("/")[0], client=dead.client)
        service = Service(project, name.split("/")[1], container.id)
        try:
            found = Path(data_path(service))
            parent = found if found.is_dir() else found.parent  # as io_contention chose
        except Exception:  # noqa: BLE001, S112 - gone, or not a directory of this machine
            continue  # nothing of ours is there to find
        for directory in sorted(parent.glob(f"{OWN_PREFIX}*")):
            run = run_of(directory.name, OWN_PREFIX)
            if run is not None and dead.owns(run, project.name) and directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
                said.append(f"swept {name}: scratch directory {directory} (run {run})")
    return said


@undoer("stress-ng")
def _undo_stress(data: dict[str, Any]) -> str:
    directory = Path(str(data["directory"]))
    if "cgroup" in data:
        outcome = _stop_contention(OwnCgroup(str(data["cgroup"])), directory)
        if not data.get("applied") and outcome == "no stress-ng was running":
            return "stress-ng was never started: nothing to undo"
        return outcome
    # An entry of an earlier version: the pid was added once stress-ng ran.
    pid = int(data.get("pid", 0))
    outcome = "stress-ng was not running"
    if pid > 1 and linux.is_alive(pid, str(data.get("start", ""))):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        outcome = f"stopped stress-ng (pid {pid})"
    shutil.rmtree(directory, ignore_errors=True)
    return f"{outcome}; removed {directory}"


# -- chaos.<fault> -----------------------------------------------------------------------


@fault(
    "memory_cap",
    journal=("cgroup",),
    leaves=("cgroup-limit",),
    requires=("root", "this-kernel"),
    example="chaos.memory_cap({service}, '400m')",
)
def _chaos_memory_cap(
    chaos: Chaos,
    service: str,
    limit: int | str,
    *,
    allow_swap: bool = False,
    recovery_timeout: float | str | None = None,
) -> AbstractContextManager[MemoryHandle]:
    """Cap ``service``'s memory (and swap) in its cgroup (e.g. '256m') so the OOM
    killer acts past it; ``handle.oom_victims()`` names what it killed. Undo: the exact
    previous limits, then waits until the service runs and is healthy
    (``restored_by`` says who brought it back)."""
    parse_size(limit, name="memory limit")
    timeout = chaos.recovery_timeout(recovery_timeout)
    return memory_cap(
        chaos.service(service), limit, allow_swap=allow_swap, recovery_timeout=timeout
    )


@fault(
    "cpu_quota",
    grid={"cpus": (0.5, 0.2, 0.1, 0.05)},
    journal=("cgroup",),
    leaves=("cgroup-limit",),
    requires=("root", "this-kernel"),
    example="chaos.cpu_quota({service}, 0.7)",
)
def _chaos_cpu_quota(chaos: Chaos, service: str, cpus: float) -> AbstractContextManager[CpuHandle]:
    """Let ``service`` use at most ``cpus`` CPUs (a CFS quota, e.g. 0.5). Undo: the
    exact previous quota and period."""
    check_cpus(cpus)
    return cpu_quota(chaos.service(service), cpus)


@fault(
    "io_throttle",
    journal=("cgroup",),
    leaves=("cgroup-limit",),
    requires=("root", "this-kernel"),
    example="chaos.io_throttle({service}, write_bps='50m')",
)
def _chaos_io_throttle(
    chaos: Chaos, service: str, *, path: str | None = None, **limits: int | str
) -> AbstractContextManager[IoHandle]:
    """Throttle block I/O on the disk holding ``service``'s data: read_bps,
    write_bps, read_iops, write_iops (on cgroup v1 only direct and fsync'd writes).
    Undo: the exact previous rules."""
    return io_throttle(chaos.service(service), path=path, **limits)


@fault(
    "io_contention",
    grid={"workers": (1, 2, 4)},
    journal=("stress-ng",),
    leaves=("own-cgroup",),
    requires=("root", "this-kernel", "stress-ng"),
    example="chaos.io_contention({service}, workers=1, bytes_per_worker='16m')",
)
def _chaos_io_contention(
    chaos: Chaos, service: str, *, workers: int = 2, **options: Any
) -> AbstractContextManager[ContentionHandle]:
    """Compete for ``service``'s disk with ``workers`` stress-ng writers of ours
    (with fsync), started in a cgroup of ours journaled before they start. Undo: every
    process in that cgroup stopped, its files removed."""
    return io_contention(chaos.service(service), workers=workers, **options)
