"""Which Docker engine a project runs on, and whether its pids are this kernel's.

An engine reports each container's first process as ``State.Pid``, a pid of the pid
namespace the engine itself runs in. That names the container's process here only
when the engine runs beside pytest, on this kernel and in its pid namespace. An
engine in a container (GitLab's ``docker:dind``), in a VM (Docker Desktop, colima) or
on another machine (``DOCKER_HOST=tcp://...``) reports numbers that name, here,
whatever process has them: a signal, a namespace entered, a cgroup file written or a
volume path used by name would land on something else.

So nothing of the kernel is touched for a container before its pid is proved to be
that container's first process right now (:func:`linux.prove_first_process`), and
an engine whose pids are shown not to be ours is refused at once for every fault that
acts through the kernel, naming the situation. Faults that go through the Docker API
alone (stop, pause, SQL run with ``docker exec``) still run there.

The verdict on an engine: ``local`` (a container's pid proved to be its process here),
``remote`` (the engine runs another kernel, or a running container's pid is another
process here), or not yet known (no container of it ran yet: the first one decides).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DockerUnavailable, RemoteEngine, UnsafeTarget
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from . import linux

if TYPE_CHECKING:
    import docker

#: Where the Docker SDK and CLI look when DOCKER_HOST is not set.
DEFAULT_URL = "unix:///var/run/docker.sock"


def engine_url() -> str:
    """The URL this process reaches Docker at (DOCKER_HOST, else the default socket)."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


@dataclass
class Engine:
    """One Docker engine: how it is reached, what it says it is, and whether its pids
    are this kernel's (``local``: True, False, or None while unknown)."""

    url: str
    id: str
    name: str
    kernel: str
    local: bool | None = None
    #: What the verdict rests on, as a clause ("container web's pid 812 is its
    #: process here"), or why there is none yet.
    evidence: str = "no running container of it was seen yet"

    def describe(self) -> str:
        """How the report header names the engine."""
        if self.local is True:
            where = f"this kernel's ({self.evidence})"
        elif self.local is False:
            where = (
                f"REMOTE, not this kernel's ({self.evidence}): faults that act through the "
                "kernel are refused, the Docker API's (stop, pause, SQL) run"
            )
        else:
            where = (
                "whether its pids are this kernel's is proved on its first container "
                f"({self.evidence})"
            )
        return f"engine {self.url} (id {self.id[:14]}, name {self.name}): {where}"

    def learn(self, local: bool, evidence: str) -> None:
        """Record what a container showed; a proof of ``local`` never turns to remote
        on a later failure (that container may have restarted meanwhile), and the
        reverse: one engine cannot be both."""
        if self.local is None:
            self.local, self.evidence = local, evidence

    def refusal(self, what: str) -> RemoteEngine:
        """The one sentence that refuses ``what`` (acting on a container through the
        kernel) on an engine whose pids are not this kernel's."""
        return RemoteEngine(
            f"refusing to {what}: the Docker engine at {self.url} (id {self.id[:14]}, name "
            f"{self.name!r}) does not run its containers in this machine's kernel and pid "
            f"namespace ({self.evidence}), so its pids, namespaces, cgroups and paths name "
            "other things here. Faults that go through the Docker API (chaos.stop, "
            "chaos.pause, the PostgreSQL faults) work against it; for the others run pytest "
            "as root where the engine runs (inside its VM, container or machine)."
        )


def identify(
    client: docker.DockerClient, url: str | None = None, project_label: str | None = None
) -> Engine:
    """Ask ``client``'s engine who it is, and judge its pids at once when it runs
    another kernel or has running containers to prove them on: those carrying
    ``project_label`` (``label=value``) first, then any. One container proved local
    decides local (an odd one, e.g. a gVisor sandbox, may not prove); none proved
    and one shown not to be its process decides remote."""
    from docker.errors import DockerException

    try:
        info = client.info()
    except DockerException as exc:
        raise DockerUnavailable(
            f"the Docker engine at {url or engine_url()} did not answer: {exc}"
        ) from None
    engine = Engine(
        url=url or engine_url(),
        id=str(info.get("ID") or "?"),
        name=str(info.get("Name") or "?"),
        kernel=str(info.get("KernelVersion") or "?"),
    )
    here = os.uname().release
    if engine.kernel not in ("?", here):
        engine.learn(False, f"it runs kernel {engine.kernel}, this machine {here}")
        return engine
    against: tuple[bool, str] | None = None
    with contextlib.suppress(DockerException):
        ids = [
            str(c["Id"])
            for filters in ([{"label": project_label}] if project_label else []) + [{}]
            for c in client.api.containers(filters={"status": "running", **filters})
        ]
        for container_id in list(dict.fromkeys(ids))[:5]:
            verdict = judge(client, container_id)
            if verdict is not None and verdict[0]:
                engine.learn(*verdict)
                return engine
            against = against or verdict
    if against is not None:
        engine.learn(*against)
    return engine


def judge(client: docker.DockerClient, container_id: str) -> tuple[bool, str] | None:
    """Whether ``container_id``'s first process, as the engine reports it, is its
    process on this kernel: (True/False, evidence), or None when the container gave
    no answer to rely on (not running, or restarted while it was being looked at)."""
    from docker.errors import DockerException

    try:
        attrs = client.api.inspect_container(container_id)
        error = proof_error(attrs)
        if error is None:
            return True, f"container {_name(attrs)}'s pid {_pid(attrs)} is its process here"
        again = client.api.inspect_container(container_id)
    except DockerException:
        return None
    if not _running(attrs) or (_pid(again), _started(again)) != (_pid(attrs), _started(attrs)):
        return None
    reason = error.rstrip(".")
    return False, f"container {_name(attrs)}'s pid {_pid(attrs)} is not its process here: {reason}"


def prove(attrs: dict[str, Any]) -> int:
    """The first process of the container Docker described with ``attrs`` (its
    inspect), proved to be that container's process on this kernel right now; else
    UnsafeTarget saying what failed."""
    error = proof_error(attrs)
    if error is not None:
        raise UnsafeTarget(error)
    return _pid(attrs)


def proof_error(attrs: dict[str, Any]) -> str | None:
    """Why ``attrs``'s pid is not proved to be its container's process here, or None."""
    if not _running(attrs):
        return f"container {_name(attrs)} is not running"
    mode = str((attrs.get("HostConfig") or {}).get("PidMode") or "")
    namespace = "own" if mode in ("", "private") else "host" if mode == "host" else "other"
    try:
        linux.prove_first_process(
            _pid(attrs),
            str(attrs["Id"]),
            pid_namespace=namespace,
            started_at=_started(attrs),
        )
    except UnsafeTarget as exc:
        return str(exc)
    return None


def _running(attrs: dict[str, Any]) -> bool:
    state = attrs.get("State") or {}
    return bool(state.get("Running")) and _pid(attrs) > 1


def _pid(attrs: dict[str, Any]) -> int:
    return int((attrs.get("State") or {}).get("Pid") or 0)


def _name(attrs: dict[str, Any]) -> str:
    return str(attrs.get("Name") or attrs.get("Id", "?")[:12]).lstrip("/")


def _started(attrs: dict[str, Any]) -> float | None:

    text = str((attrs.get("State") or {}).get("StartedAt") or "")
    seconds = docker_timestamp(text) if text else 0.0
    return seconds if seconds > 0 else None


def client_for(engine_id: str | None, url: str | None) -> tuple[docker.DockerClient, str]:
    """A client of the engine whose id is ``engine_id`` (a journal entry's), and its
    URL: the engine this process reaches now if it is that one, else the one at
    ``url`` if it is. DockerUnavailable, naming the engine, when neither is: an undo
    is never tried against another engine. Without an id (an entry of an older
    version), the engine reached now."""

    if engine_id is None:
        return docker_client(), engine_url()
    tried = []
    for candidate in dict.fromkeys([engine_url(), url or engine_url()]):
        try:
            client = docker_client(candidate)
        except DockerUnavailable as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        try:
            found = str(client.info().get("ID") or "?")
        except Exception as exc:  # noqa: BLE001 - the SDK's errors are many; one sentence
            found = f"no answer ({exc})"
        if found == engine_id:
            return client, candidate
        client.close()
        tried.append(f"{candidate} is engine {found[:14]}")
    raise DockerUnavailable(
        f"it was applied through Docker engine {engine_id[:14]} at {url}, which cannot be "
        f"reached now ({'; '.join(tried)}); nothing was undone: reach that engine "
        f"(DOCKER_HOST={url}) and run pytest --chaos-cleanup again."
    )


def docker_client(url: str | None = None) -> docker.DockerClient:
    """A client of the engine at ``url`` (default: DOCKER_HOST, else the local socket;
    the docker CLI's TLS variables apply), checked to answer."""
    import os

    import docker
    from docker.errors import DockerException

    environment = dict(os.environ) if url is None else {**os.environ, "DOCKER_HOST": url}
    try:
        client = docker.from_env(timeout=30, environment=environment)
        client.ping()
    except DockerException as exc:
        if "Permission denied" in str(exc):
            raise DockerUnavailable(
                "permission denied on the Docker socket: run pytest as root (sudo), "
                "or as a member of the docker group."
            ) from exc
        raise DockerUnavailable(
            f"cannot reach the Docker daemon ({exc}): start it (systemctl start docker, or "
            "dockerd as root) or point DOCKER_HOST at it."
        ) from exc
    return client


def docker_timestamp(text: str) -> float:
    """Docker's RFC 3339 times carry nanoseconds; Python reads microseconds."""
    import re
    from datetime import datetime

    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return 0.0
    head, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}{zone}").timestamp()
