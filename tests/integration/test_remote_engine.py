"""Never the wrong target: against a Docker engine whose pids are not this kernel's.

A Docker-in-Docker engine runs here, as a user's remote engine would (GitLab CI's
``docker:dind``, ``DOCKER_HOST=tcp://...``, Docker Desktop's VM): it reports its
containers' pids in its own pid namespace. Its runtime is made to give the remote
project's containers exactly the numbers of the processes of a sentinel container on
this machine (a container of another project, with a volume of the same name as the
remote project's). Then every fault kind in the registry is tried against the remote
project through the plugin, as a user would (``DOCKER_HOST`` and ``--chaos-project``):
each is refused in one sentence, or goes through the Docker API and hits the remote
container; and the sentinel's namespaces, rules, qdiscs, cgroups, volume and
processes are byte for byte as they were. The same after ``kill -9`` of that pytest
and ``--chaos-cleanup`` run without ``DOCKER_HOST``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_chaos import registry, wait_for_recovery
from pytest_chaos.targets import linux

HERE = Path(__file__).parent
BASE_IMAGE = os.environ.get("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
DIND_IMAGE = "pytest-chaos/test-dind:bookworm"
TINY_IMAGE = "pytest-chaos/test-busybox:inner"
LABEL = "io.pytest-chaos.test"
#: The sentinel's cgroup files a misdirected fault would write, and its members.
CGROUP_FILES = (
    "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cpu.cfs_quota_us",
    "cpu.cfs_period_us", "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device", "freezer.state",
    "pids.max", "cgroup.procs",
)  # fmt: skip

#: What the plugin must do with each registered fault against the remote project:
#: the call, and "refused" (needs this kernel), "api" (goes through the Docker API to
#: the remote container, applied and undone), "exec" (docker exec in the remote
#: container), "client" (a client of the service's published address, no kernel), or
#: "swarm" (a node fault of a local swarm, refused on compose). Every fault that
#: declares it acts through this kernel ("this-kernel") is refused, its registered
#: example called on the remote project; the others are listed here. A kind in
#: neither fails the inner test: every kind, now and later, is tried.
NOT_THROUGH_THIS_KERNEL = {
    "pause": ("chaos.pause('web')", "api"),
    "stop": ("chaos.stop('web', grace=2)", "api"),
    "max_connections": ("chaos.max_connections('web', 10)", "exec"),
    "connection_hog": (
        "chaos.connection_hog('web', 'postgresql://x@127.0.0.1:9/x?connect_timeout=2', 1)",
        "client",
    ),
    "partition_node": ("chaos.partition_node('node1')", "swarm"),
    "split_cluster": ("chaos.split_cluster(['node1'])", "swarm"),
    "freeze_node": ("chaos.freeze_node('node1')", "swarm"),
    "crash_node": ("chaos.crash_node('node1')", "swarm"),
}
CALLS = {
    **{
        name: (
            kind.call(service="web", peer="db", node="node1", dsn="postgresql://x@db/x"),
            "refused",
        )
        for name, kind in registry.faults().items()
        if kind.module.startswith("pytest_chaos.") and "this-kernel" in kind.requires
    },
    **NOT_THROUGH_THIS_KERNEL,
}

INNER = r"""
import docker, pytest
from pytest_chaos import FaultError, RemoteEngine, registry
from pytest_chaos.errors import ConfigurationError

CALLS = {calls!r}


def test_every_registered_fault_is_tried():
    built_in = [n for n, k in registry.faults().items() if k.module.startswith("pytest_chaos.")]
    assert sorted(built_in) == sorted(CALLS)


@pytest.mark.effect_optional
@pytest.mark.parametrize("kind", sorted(CALLS))
def test_fault(chaos, kind):
    call, expect = CALLS[kind]
    remote = docker.from_env()  # the remote engine (DOCKER_HOST)
    web = remote.containers.get(chaos.service("web").container_id)
    if expect == "refused":
        with pytest.raises(RemoteEngine, match="does not run its containers in this machine"):
            eval(call)
    elif expect == "api":
        handle = eval(call)
        web.reload()
        assert web.attrs["State"]["Paused"] or not web.attrs["State"]["Running"]
        assert handle.effect().took
        chaos.undo(handle)
        web.reload()
        assert web.attrs["State"]["Running"] and not web.attrs["State"]["Paused"]
    elif expect == "exec":
        # psql runs through the remote engine's exec API inside the remote container,
        # which has no postgres user: the exec's exit status 126 comes from there.
        with pytest.raises(FaultError, match=r"psql in web failed \(126\)"):
            eval(call)
    elif expect == "client":
        with pytest.raises(FaultError, match="the hog opened 0 of 1 connections"):
            eval(call)
    else:
        with pytest.raises(ConfigurationError, match="swarm"):
            eval(call)


def test_bpf_probes_are_refused(bpf):
    with pytest.raises(RemoteEngine, match="does not run its containers in this machine"):
        with bpf.watch("web"):
            pass
"""

HOLD = """
import pathlib, time


def test_paused_then_killed(chaos):
    chaos.pause("web")
    pathlib.Path({marker!r}).write_text("in force")
    time.sleep(300)  # the fault's dwell: the outer test kills this pytest here
"""


def run(*argv: str, **options: Any) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **options)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr or done.stdout}"
    return done.stdout


def docker_host(*argv: str, **options: Any) -> str:
    """The docker CLI against this machine's own engine, whatever DOCKER_HOST says."""
    return run("docker", "-H", "unix:///var/run/docker.sock", *argv, **options)


@dataclass
class Remote:
    """The remote engine (reached at ``url``), its project, and the sentinel here."""

    url: str
    container: str  # the dind container
    project: str
    sentinel: str
    #: Remote service -> the sentinel pid its container's State.Pid was made to equal.
    pinned: dict[str, int]
    compose_file: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.url, **extra}

    def inspect(self, service: str) -> dict[str, Any]:
        found = run(
            "docker", "ps", "-aq", "--filter",
            f"label=com.docker.compose.project={self.project}", "--filter",
            f"label=com.docker.compose.service={service}", env=self.env(),
        ).split()  # fmt: skip
        assert len(found) == 1, found
        return dict(json.loads(run("docker", "inspect", found[0], env=self.env()))[0])


def _build_images() -> None:
    docker_host(
        "build", "-q", "-t", DIND_IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        str(HERE / "dind"),
    )  # fmt: skip


def _tiny_rootfs(folder: Path) -> Path:
    """A root file system of one static busybox (Debian's busybox-static)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is not installed (scripts/setup installs it)"
    archive = folder / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for name in ("sh", "sleep"):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
    return archive


def _remove_leftovers() -> None:
    """Containers and volumes of this test whose pytest is gone (a killed run)."""
    listed = docker_host(
        "ps", "-a", "--filter", f"label={LABEL}=remote-engine", "--format",
        '{{.ID}} {{.Label "io.pytest-chaos.owner"}}',
    )  # fmt: skip
    for line in listed.splitlines():
        container, _, owner = line.partition(" ")
        pid, _, started = owner.partition("@")
        if pid.isdigit() and linux.is_alive(int(pid), started):
            continue
        docker_host("rm", "-f", "-v", container)


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Iterator[Remote]:
    _remove_leftovers()
    _build_images()
    folder = tmp_path_factory.mktemp("remote-engine")
    socket_dir = folder / "socket"
    socket_dir.mkdir()
    me = f"{os.getpid()}@{linux.start_time(os.getpid())}"
    tag = f"{os.getpid()}x{time.monotonic_ns() % 10**6}"
    project, dind, sentinel = f"remote{tag}", f"pytest-chaos-dind-{tag}", f"sentinel-{tag}"
    volumes = [f"{project}_data", f"{dind}-lib"]
    labels = ["--label", f"{LABEL}=remote-engine", "--label", f"io.pytest-chaos.owner={me}"]
    try:
        docker_host(
            "run", "-d", "--name", dind, *labels,
            "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined", "--cgroupns", "private",
            "-v", f"{dind}-lib:/var/lib/docker", "-v", f"{socket_dir}:/run/dind-host",
            DIND_IMAGE,
            "dockerd", "-H", "unix:///var/run/docker.sock", "-H",
            "unix:///run/dind-host/docker.sock", "--storage-driver", "overlay2",
        )  # fmt: skip
        url = f"unix://{socket_dir}/docker.sock"
        env = {**os.environ, "DOCKER_HOST": url}

        def answers() -> bool:
            return subprocess.run(["docker", "info"], env=env, capture_output=True).returncode == 0

        wait_for_recovery(answers, timeout=60, interval=0.1, what="the remote engine")
        run("docker", "import", "-c", "ENV PATH=/bin", str(_tiny_rootfs(folder)), TINY_IMAGE,
            env=env)  # fmt: skip
        # The sentinel: a container of another project here, with a volume named as
        # the remote project's, tini and a child.
        docker_host(
            "run", "-d", "--name", sentinel, *labels,
            "--label", f"com.docker.compose.project=sentinel{tag}",
            "--label", "com.docker.compose.service=sentinel",
            "-v", f"{project}_data:/data", "--entrypoint", "/usr/bin/tini", BASE_IMAGE,
            "--", "sleep", "infinity",
        )  # fmt: skip
        first = int(docker_host("inspect", "-f", "{{.State.Pid}}", sentinel))
        wait_for_recovery(
            lambda: len(linux.children(first)) == 1, timeout=10, interval=0.02,
            what="the sentinel's child",
        )  # fmt: skip
        pinned = {"web": first, "db": linux.children(first)[0]}
        compose_file = folder / "docker-compose.yml"
        compose_file.write_text(
            "version: '3'\n"
            "services:\n"
            # web has no init: a child of its first process would take the next pid,
            # the one db is pinned to (the sentinel's child), on a quiet host.
            f"  web: {{image: {TINY_IMAGE}, command: sleep 3600,"
            " volumes: ['data:/data']}\n"
            f"  db: {{image: {TINY_IMAGE}, init: true, command: sleep 3600}}\n"
            "volumes:\n  data: {}\n"
        )
        compose = ["docker-compose", "-p", project, "-f", str(compose_file)]
        run(*compose, "up", "--no-start", env=env)
        # In increasing order: a container's helpers (its shim) take the pids just
        # below its own, so the lower target goes first.
        for service, pid in sorted(pinned.items(), key=lambda sp: sp[1]):
            docker_host("exec", dind, "sh", "-c", f"echo {pid} > /run/pin-target")
            started = subprocess.run(
                [*compose, "start", service], env=env, capture_output=True, text=True, check=False
            )
            # The pin's own log says what each try got, for a start that failed.
            host = ["docker", "-H", "unix:///var/run/docker.sock"]
            tries = subprocess.run(
                [*host, "exec", dind, "cat", "/run/pin.log"],
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            assert started.returncode == 0, (
                f"compose start {service} (pinned to {pid}): {started.stderr or started.stdout}\n"
                f"the pin's tries:\n{tries}"
            )
        made = Remote(url, dind, project, sentinel, pinned, compose_file)
        for service, pid in pinned.items():
            assert made.inspect(service)["State"]["Pid"] == pid, "the pin did not take"
        yield made
    finally:
        for name in (dind, sentinel):
            subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", "rm", "-f", "-v", name],
                           capture_output=True, check=False)  # fmt: skip
        for volume in volumes:
            subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", "volume", "rm", volume],
                           capture_output=True, check=False)  # fmt: skip


def sentinel_snapshot(remote: Remote) -> dict[str, Any]:
    """Everything of the sentinel a misdirected fault could change, read from this
    machine's side: its state, namespaces, rules, qdiscs, cgroup files, processes and
    the files of its volume (named as the remote project's)."""
    attrs = json.loads(docker_host("inspect", remote.sentinel))[0]
    pid = int(attrs["State"]["Pid"])
    state = {k: attrs["State"][k] for k in ("Status", "Running", "Paused", "Pid", "StartedAt")}
    netns = ["nsenter", "-t", str(pid), "-n"]
    snap: dict[str, Any] = {
        "state": state,
        "restarts": attrs["RestartCount"],
        "namespaces": {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in ("net", "pid", "mnt")},
        "nft": run(*netns, "nft", "list", "ruleset"),
        "iptables": [
            line for line in run(*netns, "iptables-save").splitlines()
            if not line.startswith("#")
        ],
        "qdiscs": run(*netns, "tc", "qdisc", "show"),
    }  # fmt: skip
    cgroups: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in filter(None, controllers.split(",")):
            folder = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
            for name in CGROUP_FILES:
                if (folder / name).is_file():
                    cgroups[str(folder / name)] = (folder / name).read_text()
    snap["cgroups"] = cgroups
    snap["processes"] = sorted(
        (p, linux.comm(p), linux.start_time(p), linux.state(p))
        for p in (int(x) for x in cgroups_procs(cgroups))
    )
    mount = json.loads(docker_host("volume", "inspect", f"{remote.project}_data"))[0]["Mountpoint"]
    snap["volume"] = sorted(
        (str(p.relative_to(mount)), p.stat().st_size) for p in Path(mount).rglob("*")
    )
    return snap


def cgroups_procs(cgroups: dict[str, str]) -> set[str]:
    """Every pid the sentinel's cgroups list."""
    return {p for f, text in cgroups.items() if f.endswith("cgroup.procs") for p in text.split()}


def host_faults_of_ours() -> list[str]:
    """Processes a fault of ours starts on this machine (stress-ng, the delayer)."""
    from stack_snapshot import our_processes

    return our_processes()


def test_every_fault_kind_is_refused_or_goes_through_the_api(
    remote, pytester, tmp_path, monkeypatch
):
    before = sentinel_snapshot(remote)
    pytester.makepyfile(INNER.format(calls=CALLS))
    monkeypatch.setenv("DOCKER_HOST", remote.url)
    result = pytester.runpytest_subprocess(
        f"--chaos-project={remote.project}", f"--chaos-journal={tmp_path / 'journal'}",
        "-p", "no:cacheprovider", "-v",
    )  # fmt: skip
    result.assert_outcomes(passed=len(CALLS) + 2)
    result.stdout.fnmatch_lines(
        [f"pytest-chaos: engine {remote.url} (id *REMOTE, not this kernel's*"]
    )
    assert sentinel_snapshot(remote) == before
    assert host_faults_of_ours() == []
    for service in remote.pinned:
        state = remote.inspect(service)["State"]
        assert (state["Running"], state["Paused"]) == (True, False), f"{service}: {state}"
    assert list((tmp_path / "journal").glob("*.json")) == []


def test_a_kill_9_is_undone_on_the_remote_engine_alone(remote, pytester, tmp_path, monkeypatch):
    before = sentinel_snapshot(remote)
    marker, journal = tmp_path / "in-force", tmp_path / "journal"
    pytester.makepyfile(HOLD.format(marker=str(marker)))
    args = [f"--chaos-project={remote.project}", f"--chaos-journal={journal}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path, env=remote.env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def applied() -> bool:
            assert proc.poll() is None, "the inner pytest ended before applying its fault"
            return marker.exists()

        wait_for_recovery(applied, timeout=120, interval=0.05, transient=(), what="the pause")
    finally:
        proc.kill()
        proc.wait()
    assert remote.inspect("web")["State"]["Paused"]
    (entry,) = journal.glob("*.json")
    data = json.loads(entry.read_text())["data"]
    assert data["engine_url"] == remote.url
    engine_id = data["engine_id"]

    # The engine the entry names cannot be reached: nothing is undone, and it says so.
    entry.write_text(entry.read_text().replace(remote.url, "unix:///nonexistent/docker.sock"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    kept = pytester.runpytest_subprocess(*args, "--chaos-cleanup")
    assert kept.ret == 1
    kept.stdout.fnmatch_lines(
        [f"*could not undo pause web*Docker engine {engine_id[:14]} at "
         "unix:///nonexistent/docker.sock, which cannot be reached now*nothing was undone*"]
    )  # fmt: skip
    assert entry.exists()
    assert remote.inspect("web")["State"]["Paused"]

    # Where it can be reached, the entry is undone there, without DOCKER_HOST.
    entry.write_text(entry.read_text().replace("unix:///nonexistent/docker.sock", remote.url))
    done = pytester.runpytest_subprocess(*args, "--chaos-cleanup")
    assert done.ret == 0, done.stdout.str()
    done.stdout.fnmatch_lines(["*undid pause web*unpaused and healthy*"])
    assert not remote.inspect("web")["State"]["Paused"]
    assert not entry.exists()
    assert sentinel_snapshot(remote) == before
