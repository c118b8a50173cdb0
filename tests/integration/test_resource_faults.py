"""Resource faults against the real stack: each limit is in force (measured from
inside the container) while the context is open, and the exact previous cgroup
values are back afterwards."""

from __future__ import annotations

import time

import pytest

from pytest_chaos import ConfigurationError, wait_for_recovery
from pytest_chaos.faults.resources import cpu_quota, io_contention, io_throttle, memory_cap
from pytest_chaos.targets import linux
from pytest_chaos.targets.cgroup import cgroup_of

pytestmark = [pytest.mark.root, pytest.mark.resources, pytest.mark.slow]

CPU_FILES = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
MEMORY_FILES = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")

BUSY = """
import time
start, cpu0 = time.monotonic(), time.process_time()
while time.monotonic() - start < 1.5:
    pass
print(time.process_time() - cpu0)
"""


def snapshot(service, controller, names):
    cg = cgroup_of(service.main_pid())
    if cg.version == 2:
        names = {"cpu": ("cpu.max",), "memory": ("memory.max", "memory.swap.max")}[controller]
    return {n: cg.read(controller, n) for n in names if cg.has(controller, n)}


def run_in(service, code: str) -> str:
    result = service.container().exec_run(["python3", "-c", code])
    return result.output.decode().strip()


def test_cpu_quota_caps_cpu_time_and_restores_exactly(chaos_project):
    api = chaos_project.service("trading-api")
    before = snapshot(api, "cpu", CPU_FILES)
    with cpu_quota(api, 0.5) as handle:
        limited = float(run_in(api, BUSY))
        assert snapshot(api, "cpu", CPU_FILES) != before
    unlimited = float(run_in(api, BUSY))
    assert snapshot(api, "cpu", CPU_FILES) == before
    # 1.5 s of wall time at 0.5 CPU: about 0.75 s of CPU. Measured here 0.73-0.76 s;
    # unlimited, 1.2-1.5 s on this shared 2-core machine.
    assert limited < 0.9, limited
    assert unlimited > limited * 1.3, (unlimited, limited)
    assert handle.figures()["cpus"] == 0.5


def test_memory_cap_lets_the_oom_killer_act_and_names_the_victim(chaos_project):
    api = chaos_project.service("trading-api")
    before = snapshot(api, "memory", MEMORY_FILES)
    cg = cgroup_of(api.main_pid())
    usage = int(cg.read("memory", "memory.usage_in_bytes" if cg.version == 1 else "memory.current"))
    hog = "x = bytearray(400 * 2**20); import time; time.sleep(5)"
    with memory_cap(api, usage + 64 * 2**20) as handle:
        result = api.container().exec_run(["python3", "-c", hog])
        assert result.exit_code == 137  # SIGKILLed by the OOM killer
        victims = handle.oom_victims()
    assert [v.process for v in victims] == ["python3"]
    assert victims[0].pid != api.main_pid()  # the hog, not the API
    assert snapshot(api, "memory", MEMORY_FILES) == before
    assert handle.figures()["oom_kills"] == 1
    assert api.is_healthy()


def test_memory_cap_undo_waits_until_the_service_it_oom_killed_is_healthy(chaos_project):
    """The OOM killer ends redis-server itself (the largest process in its cgroup):
    the container exits and its restart policy starts it again. The undo lifts the
    cap and returns only once redis is healthy, saying who brought it back."""
    redis = chaos_project.service("redis")
    restarts = redis.restart_count()
    fill = (
        "import redis\n"
        "r = redis.Redis()\n"
        "for i in range(100_000):\n"
        "    r.set(f'chaos-fill-{i}', b'x' * 4096)\n"
    )
    with memory_cap(redis, redis.memory_usage(cache=False) + 32 * 2**20) as handle:
        redis.container().exec_run(["python3", "-c", fill])  # ends when redis-server dies
        wait_for_recovery(
            lambda: "redis-server" in [v.process for v in handle.oom_victims()],
            timeout=30, interval=0.05, what="the OOM killer ending redis-server",
        )  # fmt: skip
    assert redis.is_healthy()
    assert handle.restored_by == "restart-policy"
    assert redis.restart_count() == restarts + 1
    assert handle.figures()["health_wait_s"] > 0


# Inside the API's container: a file on its own disk (page cache) and one on its tmpfs.
CACHED = "/tmp/chaos-cached"  # noqa: S108 - in the container, removed by the test
SHARED = "/dev/shm/chaos-shared"  # noqa: S108 - likewise

WRITE = """
import sys
with open(sys.argv[1], "wb") as f:
    f.write(bytes(24 * 2**20))
"""


def test_memory_usage_without_cache_leaves_out_cached_files_but_not_shared_memory(
    chaos_project,
):
    """Cached files are reclaimed before an OOM kill (so a cap sized from the whole
    usage leaves more room than it seems); tmpfs pages are not."""
    api = chaos_project.service("trading-api")
    mib = 2**20
    try:
        before = (api.memory_usage(), api.memory_usage(cache=False))
        api.container().exec_run(["python3", "-c", WRITE, CACHED])
        cached = (api.memory_usage(), api.memory_usage(cache=False))
        api.container().exec_run(["python3", "-c", WRITE, SHARED])
        shared = (api.memory_usage(), api.memory_usage(cache=False))
    finally:
        api.container().exec_run(["rm", "-f", CACHED, SHARED])
    # 24 MiB written each time; the API's own use moves by a few MiB meanwhile.
    assert cached[0] - before[0] > 20 * mib, (before, cached)
    assert abs(cached[1] - before[1]) < 8 * mib, (before, cached)
    assert shared[1] - cached[1] > 20 * mib, (cached, shared)


def test_a_memory_cap_below_current_use_is_refused(chaos_project):
    api = chaos_project.service("trading-api")
    before = snapshot(api, "memory", MEMORY_FILES)
    refused = pytest.raises(ConfigurationError, match="below what trading-api uses now")
    with refused, memory_cap(api, "5m"):
        pass
    assert snapshot(api, "memory", MEMORY_FILES) == before


def test_io_throttle_slows_direct_writes_and_restores(chaos_project):
    postgres = chaos_project.service("postgres")
    write = [
        "dd",
        "if=/dev/zero",
        "of=/var/lib/postgresql/data/chaos-io-probe",
        "bs=1M",
        "count=8",
        "oflag=direct",
    ]

    def timed() -> float:
        start = time.monotonic()
        assert postgres.container().exec_run(write).exit_code == 0
        return time.monotonic() - start

    try:
        with io_throttle(postgres, write_bps="4m") as handle:
            throttled = timed()
        free = timed()
    finally:
        postgres.container().exec_run(["rm", "-f", "/var/lib/postgresql/data/chaos-io-probe"])
    # 8 MiB at 4 MiB/s: about 2 s (the first second's budget lets some through at once).
    assert throttled > 1.0, throttled
    assert free < throttled / 3, (free, throttled)
    cg = cgroup_of(postgres.main_pid())
    if cg.version == 1:
        assert handle.device not in cg.read("blkio", "blkio.throttle.write_bps_device")


def test_io_contention_runs_stress_ng_until_undone(chaos_project):
    postgres = chaos_project.service("postgres")
    with io_contention(postgres, workers=2, bytes_per_worker="32m") as handle:
        assert len(linux.children(handle.pid)) >= 2
        directory = handle.directory
    assert linux.is_gone(handle.pid)
    import os

    assert not os.path.exists(directory)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: cpu_quota(s, 0), "cpus must be between"),
        (lambda s: cpu_quota(s, "half"), "cpus must be a number"),
        (lambda s: memory_cap(s, "lots"), "is not a size"),
        (lambda s: io_throttle(s), "io_throttle takes one or more of"),
        (lambda s: io_throttle(s, write_bps="fast"), "is not a size"),
        (lambda s: io_throttle(s, writes=5), "io_throttle takes one or more of"),
        (lambda s: io_contention(s, workers=0), "workers must be between"),
    ],
)
def test_bad_resource_arguments_apply_nothing(chaos_project, call, message):
    api = chaos_project.service("trading-api")
    before = snapshot(api, "cpu", CPU_FILES), snapshot(api, "memory", MEMORY_FILES)
    with pytest.raises(ConfigurationError, match=message), call(api):
        pass
    assert (snapshot(api, "cpu", CPU_FILES), snapshot(api, "memory", MEMORY_FILES)) == before


@pytest.mark.parametrize("kind", ["cpu", "memory"])
def test_kill_9_of_pytest_leaves_the_limit_and_cleanup_restores_it(
    chaos_project, kill_9_during, kind
):
    call = {"cpu": 'chaos.cpu_quota("redis", 0.3)', "memory": 'chaos.memory_cap("redis", "200m")'}
    files = {"cpu": CPU_FILES, "memory": MEMORY_FILES}[kind]
    redis = chaos_project.service("redis")
    before = snapshot(redis, kind, files)
    killed = kill_9_during(call[kind])
    assert snapshot(redis, kind, files) != before, "the limit should outlive a SIGKILLed pytest"
    result = killed.cleanup()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["pytest-chaos: undid * redis*restored *"])
    assert snapshot(redis, kind, files) == before
    killed.assert_as_before()
