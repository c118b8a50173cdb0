"""Services of a Docker Compose project, found through the Docker SDK by the labels
compose puts on every container. Only containers of the project under test are ever
returned; anything else is refused."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import (
    ChaosError,
    ForeignTarget,
    RecoveryTimeout,
    TargetStopped,
    UnknownService,
    UnsafeTarget,
)
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..observe.recovery import wait_for_recovery
from . import linux
from .engine import (
    Engine,
    docker_client,
    docker_timestamp,
    engine_url,
    identify,
    judge,
    proof_error,
)

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from ..journal import Journal
    from ..waits import PutOff
    from .cgroup import Cgroup

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"


class ComposeProject:
    """A running compose project, by name."""

    #: What the project is, in messages.
    kind = "compose project"
    #: The label naming the project a container belongs to.
    project_label = PROJECT_LABEL

    def __init__(
        self,
        name: str,
        client: docker.DockerClient | None = None,
        journal: Journal | None = None,
        url: str | None = None,
    ) -> None:
        self.name = name
        self.client = client if client is not None else docker_client(url)
        #: Where the engine is reached (for messages and the journal).
        self.url = url or engine_url()
        self._engine: Engine | None = None
        #: Where faults on this project record themselves before applying (None: they
        #: are not crash-safe; the chaos fixture's project always has one).
        self.journal = journal
        self._pins: dict[str, Pin] = {}
        self._services: dict[str, Service] = {}
        self._pins_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The engine the project runs on, and whether its pids are this kernel's
        (asked once: see :mod:`.engine`)."""
        if self._engine is None:
            self._engine = identify(self.client, self.url, f"{self.project_label}={self.name}")
        return self._engine

    def engine_record(self) -> dict[str, str]:
        """What a journal entry records of the engine, so that only that engine is
        asked to undo it."""
        return {"engine_id": self.engine.id, "engine_url": self.url}

    def containers(self) -> list[Container]:
        """Every container of the project, running or not."""
        return list(
            self.client.containers.list(
                all=True, filters={"label": f"{PROJECT_LABEL}={self.name}"}, ignore_removed=True
            )
        )

    def service_names(self) -> list[str]:
        """The project's service names, sorted."""
        return sorted({c.labels.get(SERVICE_LABEL, "") for c in self.containers()} - {""})

    def service(self, name: str) -> Service:
        """The service of that name (exactly one container), or one container of it by
        its number (``web.2``); else UnknownService. Found through Docker once per run
        of its container (see :class:`Pin`)."""
        if not isinstance(name, str) or not name:
            raise UnknownService(f"a service name is a non-empty string, not {name!r}.")
        known = self._services.get(name)
        if known is not None:
            pin = self._pins.get(known.container_id)
            if pin is not None and pin.holds():
                return known
        containers = self.containers()
        service, number = name, None
        if not any(c.labels.get(SERVICE_LABEL) == name for c in containers):
            service, number = split_task(name)
        found = [c for c in containers if c.labels.get(SERVICE_LABEL) == service]
        if not found:
            names = ", ".join(self.service_names()) or "none (is the project up?)"
            raise UnknownService(
                f"compose project {self.name!r} has no service {name!r}; its services: {names}."
            )
        if number is not None:
            found = [c for c in found if c.labels.get(NUMBER_LABEL) == str(number)]
            if not found:
                raise UnknownService(
                    f"service {service!r} of {self.name!r} has no container {number}; its "
                    f"containers: {', '.join(self.task_names(service))}."
                )
        if len(found) > 1:
            raise UnknownService(
                f"service {name!r} of {self.name!r} has {len(found)} containers: name one "
                f"({', '.join(self.task_names(name))}), or every one with {name + '.*'!r}."
            )
        made = Service(self, service, str(found[0].id), name if number is not None else "")
        made.remember(found[0].attrs)
        self._services[name] = made
        return made

    def task_names(self, name: str) -> list[str]:
        """A name for each container of service ``name`` (``web.1``, ``web.2``...; the
        service's own name when it has one container), what ``service()`` takes."""
        numbers = sorted(
            int(c.labels.get(NUMBER_LABEL) or 0)
            for c in self.containers()
            if c.labels.get(SERVICE_LABEL) == name
        )
        if not numbers:
            self.service(name)  # raises UnknownService, naming the services there are
        return [name] if len(numbers) == 1 else [f"{name}.{n}" for n in numbers]

    def all_healthy(self) -> bool:
        """True when every container runs and every health check passes."""
        containers = self.containers()
        return bool(containers) and all(_is_healthy(c.attrs) for c in containers)


def split_task(name: str) -> tuple[str, int | None]:
    """``web.2`` -> ("web", 2); a name without a number after its last dot as it is."""
    base, dot, number = name.rpartition(".")
    if dot and base and number.isdigit():
        return base, int(number)
    return name, None


@dataclass(frozen=True)
class Pin:
    """What Docker said of a running container, trusted while the container's first
    process lives: its host pid and start time name that very run of the container.
    A restart (by Docker or by anyone) makes a new first process, so the next lookup
    asks Docker again. Only what cannot change during one run is read from a pin:
    the first process, when it started, the restart count, the restart policy, the
    project label, the addresses and published ports. (Two operator actions on a
    running container escape it until its next restart: ``docker update --restart``
    and ``docker network connect``/``disconnect``.)"""

    attrs: dict[str, Any] = field(compare=False)
    init_pid: int
    init_start: str

    def holds(self) -> bool:
        """Whether the run it describes is still the container's (one /proc read)."""
        return linux.is_alive(self.init_pid, self.init_start)


@dataclass(frozen=True)
class Service:
    """One service's container. Lookups are live: a restarted container keeps its id
    but gets a new pid, so pids are read when they are needed."""

    project: ComposeProject
    name: str
    container_id: str
    #: The name it was asked by when that names one of several containers or tasks
    #: ("web.2": replica or slot 2), else "".
    task: str = ""

    @property
    def label(self) -> str:
        """How reports name it: the service, or the one task of it (``web.2``)."""
        return self.task or self.name

    def container(self) -> Container:
        """The container now, refused if it left the project."""
        import docker.errors

        try:
            container = self.engine().containers.get(self.container_id)
        except docker.errors.NotFound:
            raise UnknownService(
                f"the container of service {self.name!r} ({self.container_id[:12]}) was removed."
            ) from None
        if container.labels.get(self.project_label) != self.project.name:
            raise ForeignTarget(
                f"container {self.container_id[:12]} is not part of {self.project.kind} "
                f"{self.project.name!r}; refusing to touch it."
            )
        return container

    #: The label naming the project a container belongs to.
    project_label = PROJECT_LABEL

    def engine(self) -> docker.DockerClient:
        """The Docker engine that runs the container."""
        return self.project.client

    def state(self) -> dict[str, Any]:
        """Docker's State of the container (Running, Pid, Health, ...), asked now."""
        return dict(self.container().attrs["State"])

    def await_exit_seen(
        self, pid: int, started_before: object, *, dies_within: float, seen_within: float
    ) -> None:
        """Before judging recovery after a process of the container was killed: if its
        first process ``pid`` ends within ``dies_within`` seconds, wait (up to
        ``seen_within``) until Docker has seen the container stop or restart: for a
        moment after the exit its state still says running, and healthy, as of the run
        that ended. A first process that lives on ends the wait after ``dies_within``."""
        deadline = time.monotonic() + dies_within
        while not linux.is_gone(pid):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        deadline = time.monotonic() + seen_within
        while time.monotonic() < deadline:
            state = self.state()
            if not state.get("Running") or state.get("StartedAt") != started_before:
                return
            time.sleep(0.02)

    def pinned(self) -> dict[str, Any]:
        """The container's attributes as of its current run (see :class:`Pin`): from
        Docker once per run, then checked by one read of /proc. Faults resolve their
        target through this, so applying one costs no round trip to Docker."""
        pin = self.project._pins.get(self.container_id)
        if pin is not None and pin.holds():
            return pin.attrs
        attrs = dict(self.container().attrs)  # refuses a container outside the project
        self.remember(attrs)
        return attrs

    def remember(self, attrs: dict[str, Any]) -> None:
        """Pin ``attrs``, Docker's answer for this container just now, if its first
        process is proved to be the container's on this kernel (see :mod:`.engine`)."""
        pid = int(attrs["State"].get("Pid") or 0)
        if proof_error(attrs) is not None:
            return
        start = linux.start_time(pid)
        if start:
            with self.project._pins_lock:
                self.project._pins[self.container_id] = Pin(attrs, pid, start)

    def init_pid(self) -> int:
        """The pid of the container's first process on this kernel, proved to be that
        process right now: the one gate every fault and probe that acts through the
        kernel (signals, namespaces, cgroups, paths) passes. TargetStopped when it is
        not running; RemoteEngine on an engine whose pids are not this kernel's;
        UnsafeTarget when the pid could not be proved the container's."""
        self.require_this_kernel()
        attrs = self.pinned()
        pid = int(attrs["State"].get("Pid") or 0)
        if pid <= 1 or not attrs["State"].get("Running"):
            raise TargetStopped(
                f"service {self.label!r} is not running (its container has no process)."
            )
        pin = self.project._pins.get(self.container_id)
        if pin is not None and pin.init_pid == pid and pin.holds():
            return pid
        raise self.unproved()

    def require_this_kernel(self) -> None:
        """Refuse, in one sentence, when the engine's pids are known not to be ours."""
        engine = self.project.engine
        if engine.local is False:
            raise engine.refusal(f"act on {self.label!r} through this machine's kernel")

    def unproved(self) -> ChaosError:
        """The error for a running container whose pid was not proved its process
        here: asked again, a container that restarted meanwhile is only unsafe to act
        on now; one whose engine's pids are another namespace's refuses the engine."""
        verdict = judge(self.engine(), self.container_id)
        if verdict is not None:
            self.project.engine.learn(*verdict)
        if self.project.engine.local is False:
            return self.project.engine.refusal(
                f"act on {self.label!r} through this machine's kernel"
            )
        reason = proof_error(self.container().attrs) or "it restarted while being checked"
        return UnsafeTarget(
            f"service {self.label!r}: its container's first process could not be proved to "
            f"be the one the engine reported ({reason}); try again once it runs steadily."
        )

    def own_pid(self, pid: int) -> int:
        """``pid``, once proved a process of this container on this kernel (its engine
        is this kernel's, and the pid's cgroup names the container)."""
        self.init_pid()
        return linux.check_pid(pid, self.container_id)

    def started_at(self) -> str:
        """When Docker started the container's current run (its State.StartedAt)."""
        return str(self.pinned()["State"].get("StartedAt") or "")

    def cgroup(self) -> Cgroup:
        """The container's cgroups (its first process's: every process of the
        container is in them, whatever its init runs), proved to be this container's."""
        from .cgroup import cgroup_of

        return cgroup_of(self.init_pid())

    def pids(self) -> set[int]:
        """Every process of the container now (its cgroup's members)."""
        cg = self.cgroup()
        procs = cg.path("pids" if cg.version == 1 else "", "cgroup.procs")
        return {int(p) for p in procs.read_text().split()}

    def memory_usage(self, *, cache: bool = True) -> int:
        """Bytes the container's memory cgroup holds now; with ``cache=False``, without
        the page cache the kernel would reclaim before an OOM kill (size a memory cap
        from that: a cap above cached files leaves more room than it seems)."""
        cg = self.cgroup()
        usage = int(cg.memory_usage_file().read_text())
        return usage if cache else max(0, usage - cg.memory_cache_bytes())

    def cpu_seconds(self) -> float:
        """CPU time the container's processes have used so far, in seconds (take two
        readings to get its CPU use over a window)."""
        return self.cgroup().cpu_seconds()

    def main_pid(self) -> int:
        """The service's own process on the host, checked to belong to the container."""
        return self.own_pid(linux.main_process(self.init_pid()))

    def restart_policy(self) -> str:
        """The restart policy's name: no, always, on-failure, unless-stopped."""
        policy = self.pinned()["HostConfig"].get("RestartPolicy") or {}
        return str(policy.get("Name") or "no")

    def restart_count(self) -> int:
        """How often Docker restarted the container."""
        return int(self.pinned().get("RestartCount", 0))

    def address(self) -> str:
        """The container's IP address on its (first) compose network."""
        networks = self.pinned()["NetworkSettings"]["Networks"]
        for net in networks.values():
            if net.get("IPAddress"):
                return str(net["IPAddress"])
        raise UnknownService(f"service {self.name!r} has no IP address (is it running?).")

    def addresses(self) -> list[str]:
        """Every IP address of the container, one per network it is on."""
        networks = self.pinned()["NetworkSettings"]["Networks"]
        found = [str(n["IPAddress"]) for n in networks.values() if n.get("IPAddress")]
        if not found:
            raise UnknownService(f"service {self.name!r} has no IP address (is it running?).")
        return found

    def published_port(self, port: int, protocol: str = "tcp") -> tuple[str, int]:
        """(host, port) where ``port`` of the container is published on the host."""
        bindings = self.pinned()["NetworkSettings"]["Ports"].get(f"{port}/{protocol}")
        if not bindings:
            raise UnknownService(f"service {self.name!r} does not publish {port}/{protocol}.")
        host = bindings[0]["HostIp"] or "127.0.0.1"
        return ("127.0.0.1" if host == "0.0.0.0" else host), int(bindings[0]["HostPort"])  # noqa: S104

    def is_healthy(self) -> bool:
        """Running, not paused, and its health check (if any) passing."""
        return _is_healthy(self.container().attrs)

    def events(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """What Docker reported about this container between two wall-clock times:
        [{"action": "oom" | "die" | "start" | ..., "time": seconds, "attributes": {...}}],
        oldest first ("die" carries the exitCode)."""
        self.container()  # refuses a container outside the project
        stream = self.engine().events(
            since=docker_time(since),
            until=docker_time(until or time.time()),
            filters={"container": self.container_id, "type": "container"},
            decode=True,
        )
        try:
            return [
                {
                    "action": str(e.get("Action") or e.get("status")),
                    "time": int(e.get("timeNano", 0)) / 1e9,
                    "attributes": dict((e.get("Actor") or {}).get("Attributes") or {}),
                }
                for e in stream
            ]
        finally:
            stream.close()

    def logs_tail(self, lines: int = 20) -> str:
        """The container's last log lines (for error messages)."""
        try:
            raw = self.container().logs(tail=lines)
        except Exception as exc:  # noqa: BLE001 - only for an error message
            return f"(logs unavailable: {exc})"
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    def stop(self, grace: float) -> None:
        """Stop it as an operator would: SIGTERM, then SIGKILL after ``grace`` seconds
        (Docker's restart policy leaves a stopped container alone)."""
        self.container().stop(timeout=max(1, round(grace)))

    def start_if_stopped(self) -> bool:
        """Start the container if it is neither running nor about to restart; whether
        it did."""
        state = self.state()
        if not state.get("Running") and not state.get("Restarting"):
            self.container().start()
            return True
        return False

    def ensure_running_and_healthy(
        self,
        *,
        timeout: float,
        restarts_before: int | None = None,
        start_after: float = 5.0,
        probed_after: float | None = None,
        put_off: PutOff | None = None,
    ) -> str:
        """Wait until the container runs and is healthy. If it is still stopped after
        ``start_after`` seconds (no restart policy acted), start it. With
        ``probed_after`` (a wall-clock time), "healthy" must come from a health probe
        that started after it: Docker keeps saying healthy until probes fail, which a
        process restarted inside the container may never let happen. Returns who
        brought it back: "pytest-chaos" (it started the container), "restart-policy"
        (the container restarted since ``restarts_before``) or "still-running".

        Given ``put_off`` (an interruption lifting every fault, a schedule's step), the
        wait is handed to it instead, and "awaited after ..." is returned."""
        if put_off is not None:
            return put_off.defer(
                lambda: (
                    f"{self.name} is healthy again, brought back by "
                    + self._bring_back(
                        timeout=timeout,
                        restarts_before=restarts_before,
                        start_after=start_after,
                        probed_after=probed_after,
                    )
                )
            )
        return self._bring_back(
            timeout=timeout,
            restarts_before=restarts_before,
            start_after=start_after,
            probed_after=probed_after,
        )

    def _bring_back(
        self,
        *,
        timeout: float,
        restarts_before: int | None,
        start_after: float,
        probed_after: float | None,
    ) -> str:
        """The wait of :meth:`ensure_running_and_healthy`, once no interruption puts
        it off."""
        began = time.monotonic()
        started_by_us = False

        def check() -> bool:
            nonlocal started_by_us
            state = self.state()
            if (
                # Docker says Running while it waits to restart: Restarting tells.
                (not state.get("Running") or state.get("Restarting"))
                and time.monotonic() - began > start_after
                and not started_by_us
            ):
                if state.get("Restarting"):
                    # The restart policy is backing off: Docker doubles its delay after
                    # each crash soon after a start (measured here: 1.7, 3.3, 6.5,
                    # 12.9 s...). Waiting it out would make a bounded undo unbounded.
                    self.container().restart(timeout=0)
                else:
                    self.container().start()
                started_by_us = True
            return _is_healthy(self.container().attrs, probed_after)

        try:
            wait_for_recovery(
                check, timeout=timeout, interval=0.1, what=f"service {self.name!r}",
                on_timeline=False,  # the fault's undo, not a recovery the test measures
            )  # fmt: skip
        except RecoveryTimeout as exc:
            raise RecoveryTimeout(
                f"{exc} State: {self.state().get('Status')}; last log lines:\n{self.logs_tail()}"
            ) from None
        if started_by_us:
            return "pytest-chaos"
        if restarts_before is not None and self.restart_count() > restarts_before:
            return "restart-policy"
        return "still-running"


def docker_time(seconds: float) -> Any:  # the SDK's stubs know only int and datetime
    """A wall-clock time as Docker's events API takes it, to the nanosecond. (The SDK
    turns a datetime into whole seconds: an ``until`` of now then leaves out the
    events of the current second, e.g. an OOM kill or an exit just seen.)"""
    return f"{seconds:.9f}"


def _is_healthy(attrs: dict[str, Any], probed_after: float | None = None) -> bool:
    state = attrs.get("State", {})
    if not state.get("Running") or state.get("Restarting") or state.get("Paused"):
        return False
    health = state.get("Health")
    if health is None:
        return True
    if health.get("Status") != "healthy":
        return False
    if probed_after is None:
        return True
    log = health.get("Log") or []
    return (
        bool(log)
        and log[-1].get("ExitCode") == 0
        and docker_timestamp(log[-1]["Start"]) > probed_after
    )


def project_names(client: docker.DockerClient) -> list[str]:
    """The compose projects Docker has containers of (running or not)."""
    found = {
        # The list alone, no inspect per container: one that another run removes
        # meanwhile cannot fail it.
        str((c.get("Labels") or {}).get(PROJECT_LABEL))
        for c in client.api.containers(all=True, filters={"label": PROJECT_LABEL})
    }
    return sorted(found - {"", "None"})


def attach(name: str, journal: Journal | None = None) -> ComposeProject:
    """A compose project that is already running (``--chaos-project``)."""
    from ..errors import StackStartError

    project = ComposeProject(name, journal=journal)
    if not project.containers():
        raise StackStartError(
            f"compose project {name!r} has no containers: start it first "
            f"(docker-compose -p {name} up -d) or drop --chaos-project."
        )
    return project


def start_with_pytest_docker(
    request: Any, *, timeout: float, journal: Journal | None = None
) -> ComposeProject:
    """Start the project through pytest-docker's ``docker_services`` and wait until
    every container is running and healthy.

    pytest-docker runs ``up`` before its own ``try``, so a failed start would leave
    half a stack behind: here a failed start is followed by its cleanup command.
    """
    from ..errors import StackStartError

    name = request.getfixturevalue("docker_compose_project_name")
    client = docker_client()
    _check_setup_command(
        request.getfixturevalue("docker_compose_command"),
        request.getfixturevalue("docker_setup"),
    )
    try:
        services = request.getfixturevalue("docker_services")
    except Exception as exc:  # noqa: BLE001 - pytest-docker raises bare Exception
        _cleanup_after_failed_start(request)
        raise StackStartError(
            f"compose project {name!r} did not start: {str(exc).strip()[-2000:]}"
        ) from None
    project = ComposeProject(name, client, journal)
    try:
        services.wait_until_responsive(check=project.all_healthy, timeout=timeout, pause=0.25)
    except Exception:  # noqa: BLE001 - pytest-docker raises bare Exception on timeout
        states = ", ".join(
            f"{c.labels.get(SERVICE_LABEL)}: {c.attrs['State'].get('Status')}"
            f"/{(c.attrs['State'].get('Health') or {}).get('Status', 'no health check')}"
            for c in project.containers()
        )
        if not states:
            raise StackStartError(
                f"compose project {name!r} has no container after pytest-docker's set-up "
                f"({request.getfixturevalue('docker_setup')!r}): the command started "
                "nothing; run it by hand with your docker_compose_file to see why."
            ) from None
        raise StackStartError(
            f"compose project {name!r} was not healthy within {timeout:g} s ({states})."
        ) from None
    return project


def _check_setup_command(command: str, setup: object) -> None:
    """docker-compose 1.x does not know ``up --wait`` (pytest-docker's default set-up):
    it prints its usage, exits 0 and starts nothing. Say so before anything runs."""
    import shutil
    import subprocess

    steps = [setup] if isinstance(setup, str) else list(setup or [])  # type: ignore[call-overload]
    if not any("--wait" in str(step).split() for step in steps):
        return
    if command.split()[0] != "docker-compose" or shutil.which("docker-compose") is None:
        return
    version = subprocess.run(
        ["docker-compose", "version", "--short"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if version.startswith("1."):
        from ..errors import ConfigurationError

        raise ConfigurationError(
            f"docker-compose {version} does not know `up --wait`, which pytest-docker's "
            "default docker_setup runs: it would start nothing. Define in your conftest.py "
            "`@pytest.fixture(scope='session') def docker_setup(): return ['up -d --build']` "
            "(pytest-chaos waits for every container's health itself), or use Compose v2."
        )


def _cleanup_after_failed_start(request: Any) -> None:
    from pytest_docker.plugin import DockerComposeExecutor

    cleanup = request.getfixturevalue("docker_cleanup")
    if not cleanup:
        return
    executor = DockerComposeExecutor(
        request.getfixturevalue("docker_compose_command"),
        request.getfixturevalue("docker_compose_file"),
        request.getfixturevalue("docker_compose_project_name"),
    )
    for command in [cleanup] if isinstance(cleanup, str) else cleanup:
        # Best effort: the start error is what gets raised. pytest-docker raises
        # bare Exception.
        with contextlib.suppress(Exception):
            executor.execute(command)
