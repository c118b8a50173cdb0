"""What this host offers the faults and probes, found once per session: the Docker
backend, root, the cgroup version, BPF, netem. Shown in pytest's report header so a
reader of any run's log knows which paths (and which fallbacks) it exercised."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

from .errors import ChaosError


@dataclass(frozen=True)
class Environment:
    root: bool
    docker: str  # "docker 20.10.24 (API 1.41)" or why it is not reachable
    engine: str  # which engine, and whether its pids are this kernel's (see targets.engine)
    cgroup: str  # "v1 (hybrid)", "v2", or why it is unknown
    bpf: str  # "bcc loads programs" or why not
    bpf_ok: bool
    netem: str  # "present", "absent (...)", or why it is unknown
    netem_ok: bool | None

    def header_lines(self) -> list[str]:
        return [
            f"pytest-chaos: backend {self.docker}; root {'yes' if self.root else 'no'}",
            f"pytest-chaos: {self.engine}",
            f"pytest-chaos: kernel {os.uname().release}: cgroup {self.cgroup}; "
            f"BPF {self.bpf}; netem {self.netem}",
        ]


@functools.cache
def environment() -> Environment:
    from .observe.kernel import bpf_support

    root = os.geteuid() == 0
    support = bpf_support()
    netem_ok, netem = _netem(root)
    docker, engine = _docker()
    return Environment(
        root=root,
        docker=docker,
        engine=engine,
        cgroup=_cgroup(),
        bpf="available (bcc)" if support.available else f"unavailable: {support.reason}",
        bpf_ok=support.available,
        netem=netem,
        netem_ok=netem_ok,
    )


def _docker() -> tuple[str, str]:
    """The Docker version, and which engine it is (whether its pids are ours)."""
    from .targets.engine import docker_client, engine_url, identify

    try:
        client = docker_client()
    except ChaosError as exc:
        return f"Docker unreachable: {exc}", f"engine {engine_url()}: unreachable"
    with contextlib.closing(client):
        version = client.version()
        try:
            engine = identify(client).describe()
        except ChaosError as exc:
            engine = f"engine {engine_url()}: {exc}"
    return f"docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})", engine


def _cgroup() -> str:
    from .targets.cgroup import cgroup_of

    try:
        cg = cgroup_of(os.getpid())
    except ChaosError as exc:
        return f"unknown ({exc})"
    if cg.version == 2:
        return "v2"
    hybrid = os.path.isdir("/sys/fs/cgroup/unified")
    return "v1 (hybrid)" if hybrid else "v1"


def _netem(root: bool) -> tuple[bool | None, str]:
    if not root:
        return None, "unknown (asking needs root)"
    from .faults.latency import netem_available

    try:
        present = netem_available()
    except Exception as exc:  # noqa: BLE001 - a header must not fail the run
        return None, f"unknown ({type(exc).__name__}: {exc})"
    if present:
        return True, "present"
    return False, "absent: latency uses the NFQUEUE delayer"
