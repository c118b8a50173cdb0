"""Finding a container's cgroups on v1, hybrid and v2 hosts, from fake trees."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError
from pytest_chaos.faults.resources import MemoryHandle, _v1_memory
from pytest_chaos.targets.cgroup import cgroup_of
from pytest_chaos.units import parse_size

CID = "docker/" + "a" * 64


def fake(tmp_path: Path, cgroup_lines: list[str], dirs: list[str], v2_root: bool = False):
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    root = tmp_path / "cgroup"
    for d in dirs:
        (root / d).mkdir(parents=True)
    if v2_root:
        (root / "cgroup.controllers").write_text("cpu memory io\n")
        (root / CID / "cgroup.controllers").write_text("cpu memory io\n")
    return root, proc


def test_v1_and_hybrid_hosts_use_the_v1_controllers(tmp_path):
    root, proc = fake(
        tmp_path,
        [f"4:memory:/{CID}", f"1:cpu:/{CID}", f"7:blkio:/{CID}", "0::/"],
        [f"memory/{CID}", f"cpu/{CID}", f"blkio/{CID}", "unified"],
    )
    cg = cgroup_of(42, root, proc)
    assert cg.version == 1
    assert (
        cg.path("memory", "memory.limit_in_bytes")
        == root / "memory" / CID / "memory.limit_in_bytes"
    )
    assert cg.path("blkio", "x") == root / "blkio" / CID / "x"


def test_comounted_v1_controllers_are_found(tmp_path):
    root, proc = fake(
        tmp_path,
        [f"3:cpu,cpuacct:/{CID}", f"4:memory:/{CID}"],
        [f"cpu,cpuacct/{CID}", f"memory/{CID}"],
    )
    assert (
        cgroup_of(42, root, proc).path("cpu", "cpu.cfs_quota_us").parent
        == root / "cpu,cpuacct" / CID
    )


def test_a_v2_host_uses_the_unified_directory(tmp_path):
    root, proc = fake(tmp_path, [f"0::/{CID}"], [CID], v2_root=True)
    cg = cgroup_of(42, root, proc)
    assert cg.version == 2
    assert cg.path("memory", "memory.max") == root / CID / "memory.max"
    assert cg.path("io", "io.max") == root / CID / "io.max"


@given(
    limit=st.integers(1, 2**40),
    current=st.integers(1, 2**40),
)
def test_v1_memory_writes_keep_memsw_at_least_the_limit_at_every_step(limit, current):
    state = {"limit": current, "memsw": current}
    for path, value in _v1_memory(Path("limit"), Path("memsw"), limit, limit, current):
        state[path.name] = int(value)
        assert state["memsw"] >= state["limit"]
    assert state == {"limit": limit, "memsw": limit}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256m", 256 * 2**20),
        ("1g", 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5k", 1536),
        (4096, 4096),
        ("10", 10),
    ],
)
def test_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "lots", "-1m", "0", 0, True, "1x", None])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ConfigurationError):
        parse_size(bad)


def test_a_memory_handle_reads_usage_and_limit_and_says_when_usage_neared_the_cap(tmp_path):
    usage, limit = tmp_path / "memory.usage_in_bytes", tmp_path / "memory.limit_in_bytes"
    usage.write_text("1000\n")
    limit.write_text("max\n")  # v2 spelling of "no limit"
    handle = MemoryHandle(
        kind="memory", target="api", limit_bytes=2000, usage_at_start=900,
        _usage_file=usage, _limit_file=limit,
    )  # fmt: skip
    assert handle.usage_bytes() == 1000
    assert handle.limit_in_force() == 2**63 - 1
    assert handle.peak_bytes == 900  # nothing sampled yet
    handle.samples.extend([(1.0, 1200), (2.0, 1850), (3.0, 1990), (4.0, 1500)])
    assert handle.peak_bytes == 1990
    assert handle.reached(0.9) == 2.0
    assert handle.reached(1.0) is None
    usage.unlink()  # the container exited: its cgroup is gone
    assert handle.usage_bytes() is None


def test_cpu_time_is_read_from_cpuacct_on_v1_and_cpu_stat_on_v2(tmp_path):
    root, proc = fake(
        tmp_path / "v1", [f"4:cpu,cpuacct:/{CID}", "0::/"], [f"cpu,cpuacct/{CID}", "unified"]
    )
    (root / "cpu,cpuacct" / CID / "cpuacct.usage").write_text("2500000000\n")
    assert cgroup_of(42, root, proc).cpu_seconds() == 2.5
    root, proc = fake(tmp_path / "v2", [f"0::/{CID}"], [CID], v2_root=True)
    (root / CID / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    assert cgroup_of(42, root, proc).cpu_seconds() == 1.5
