"""PostgreSQL faults: a lower ``max_connections`` (a setting that needs a restart),
and a connection hog that holds idle connections until undone.

Settings are changed with ALTER SYSTEM through ``psql`` inside the PostgreSQL
container, as the database superuser over its local socket (Docker's exec API), so
no superuser password is needed; the previous value (set in postgresql.auto.conf or
not) is restored and PostgreSQL restarted again.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, EnvironmentProblem, FaultError
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from ..registry import DeadRuns, fault, sweeper, undoer
from ..targets.compose import Service
from .base import Effect, FaultHandle, dead_runs_containers, journaled, journaled_service

if TYPE_CHECKING:
    import psycopg

    from ..chaos import Chaos
    from ..waits import PutOff


@dataclass
class MaxConnectionsHandle(FaultHandle):
    value: int = 0
    previous: str = ""
    restart_s: float = 0.0

    def describe(self) -> str:
        return f"max_connections {self.target} {self.previous} -> {self.value}"

    def figures(self) -> dict[str, float | int | str]:
        return {
            **super().figures(),
            "max_connections": self.value,
            "max_connections_before": self.previous,
            "restart_s": round(self.restart_s, 3),
        }


@dataclass
class HogHandle(FaultHandle):
    connections: int = 0
    application_name: str = ""
    _held: list[psycopg.Connection[Any]] = field(default_factory=list)

    def describe(self) -> str:
        return f"connection hog {self.target} x{self.connections}"

    def measure_effect(self) -> Effect:
        held = sum(not conn.closed for conn in self._held)
        return Effect(held > 0, f"{held} of {self.connections} connections held")

    def figures(self) -> dict[str, float | int | str]:
        return {**super().figures(), "connections": self.connections}


def psql(service: Service, sql: str, *, user: str = "postgres") -> str:
    """Run ``sql`` with psql inside the container, as ``user`` over the local socket.

    What psql prints is written to a file in the container and read back through the
    archive API, not taken from the exec's own output stream: Docker's exec stream
    sometimes arrives empty for a command that ends at once (a known race of the
    engine's exec attach; seen here twice under load: "too many clients" lost, and an
    exec's own error), which turned a refusal into an unexplained failure."""
    import secrets

    container = service.container()
    scratch = f"/tmp/pytest-chaos-psql-{secrets.token_hex(4)}"  # noqa: S108 - in the container
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-U", user, "-d", "postgres", "-c", sql]
    script = 'out="$1"; shift; "$@" >"$out" 2>&1'
    result = container.exec_run(["sh", "-c", script, "sh", scratch, *argv], user="postgres")
    output = _read_back(container, scratch)
    if output is None:  # no file: the exec itself failed (no such user, no shell)
        raw = result.output
        output = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else ""
    else:
        container.exec_run(["rm", "-f", scratch], user="postgres")
    if result.exit_code != 0:
        # Docker's exec says 126 when it cannot run the command as that user, 127 when
        # there is no such command.
        hint = {
            126: "docker exec could not run psql as user postgres there (no such user?)",
            127: "there is no psql in that container",
        }.get(result.exit_code or 0, "")
        raise FaultError(
            f"psql in {service.name} failed ({result.exit_code}): {output or hint or 'no output'}"
        )
    return output


def _read_back(container: Any, path: str) -> str | None:
    """The text of the file ``path`` in ``container``, through the archive API; None
    when there is no such file."""
    import io
    import tarfile

    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        data = tar.extractfile(member) if member is not None else None
        text = data.read() if data is not None else b""
    return text.decode("utf-8", "replace").strip()


def _restart(service: Service, timeout: float, put_off: PutOff | None = None) -> float:
    start = time.monotonic()
    service.container().restart(timeout=10)
    service.ensure_running_and_healthy(timeout=timeout, start_after=timeout, put_off=put_off)
    return time.monotonic() - start


def _current(service: Service) -> tuple[str, str, str]:
    """(value, source, sourcefile) of max_connections."""
    row = psql(
        service,
        "SELECT setting || '|' || source || '|' || coalesce(sourcefile, '') "
        "FROM pg_settings WHERE name = 'max_connections'",
    )
    value, source, sourcefile = row.split("|", 2)
    return value, source, sourcefile


def _set(service: Service, value: str | None) -> None:
    if value is None:
        psql(service, "ALTER SYSTEM RESET max_connections")
    else:
        psql(service, f"ALTER SYSTEM SET max_connections = {int(value)}")


@contextmanager
def max_connections(
    service: Service, value: int, *, restart_timeout: float = 60.0
) -> Iterator[MaxConnectionsHandle]:
    """Restart PostgreSQL with ``max_connections`` = ``value``; undo: the previous
    setting and another restart."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 262143:
        raise ConfigurationError(
            f"max_connections must be an integer from 1 to 262143, not {value!r}."
        )
    reserved = int(psql(service, "SHOW superuser_reserved_connections"))
    if value <= reserved:
        raise ConfigurationError(
            f"max_connections {value} must exceed superuser_reserved_connections ({reserved}), "
            "or PostgreSQL refuses to start."
        )
    before, _source, sourcefile = _current(service)
    # Restore what ALTER SYSTEM had set, or remove our setting if it had set nothing.
    previous = before if sourcefile.endswith("postgresql.auto.conf") else None
    handle = MaxConnectionsHandle(
        kind="max_connections", target=service.label, value=value, previous=before
    )
    data = {"previous": previous, "value": value}
    with journaled(service, "pg-max-connections", handle.describe(), data) as undone:
        try:
            _set(service, str(value))
            handle.restart_s = _restart(service, restart_timeout)
            handle.applied_at = time.monotonic()
            if _current(service)[0] != str(value):
                raise FaultError(f"{service.name} restarted but max_connections is not {value}.")
            handle._effect = Effect(True, f"PostgreSQL runs with max_connections = {value}")
            yield handle
        finally:
            _set(service, previous)
            _restart(service, restart_timeout, handle.put_off)
            handle.undone_at = time.monotonic()
            undone()


@undoer("pg-max-connections")
def _undo_max_connections(data: dict[str, Any]) -> str:
    service = journaled_service(data)
    service.ensure_running_and_healthy(timeout=60.0, start_after=0.0)
    previous = data.get("previous")
    _set(service, None if previous is None else str(previous))
    _restart(service, 60.0)
    return f"max_connections is {_current(service)[0]} again"


@contextmanager
def connection_hog(service: Service, dsn: str, connections: int) -> Iterator[HogHandle]:
    """Open ``connections`` idle connections to ``dsn`` and hold them until undone.
    Each carries an application_name with the run's id, so a leftover can be found."""
    if (
        isinstance(connections, bool)
        or not isinstance(connections, int)
        or not 1 <= connections <= 10000
    ):
        raise ConfigurationError(
            f"connections must be an integer from 1 to 10000, not {connections!r}."
        )
    try:
        import psycopg
    except ImportError:
        raise EnvironmentProblem(
            "connection_hog needs psycopg: pip install 'pytest-chaos[postgres]'."
        ) from None
    journal = service.project.journal
    name = f"{HOG_PREFIX}{journal.run_id if journal else 'norun'}"
    handle = HogHandle(
        kind="connection_hog", target=service.label, connections=connections, application_name=name
    )
    with journaled(service, "pg-hog", handle.describe(), {"application_name": name}) as undone:
        try:
            for _ in range(connections):
                try:
                    handle._held.append(
                        psycopg.connect(dsn, application_name=name, connect_timeout=10)
                    )
                except psycopg.OperationalError as exc:
                    raise FaultError(
                        f"the hog opened {len(handle._held)} of {connections} connections to "
                        f"{service.name}: {str(exc).strip().splitlines()[0]}"
                    ) from exc
            handle.applied_at = time.monotonic()
            yield handle
        finally:
            handle.keep_effect()
            for conn in handle._held:
                with contextlib.suppress(Exception):
                    conn.close()
            handle._held.clear()
            handle.lifted_at = handle.undone_at = time.monotonic()
            undone()


@undoer("pg-hog")
def _undo_hog(data: dict[str, Any]) -> str:
    service = journaled_service(data)
    if not service.state().get("Running"):  # asked of the entry's own engine
        return "PostgreSQL is not running; its connections are gone"
    name = str(data["application_name"])
    if not re.fullmatch(r"pytest_chaos_hog_[0-9a-z]+", name):
        raise FaultError(
            f"journal entry names an unexpected application {name!r}; not touching it."
        )
    ended = psql(
        service,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "  # noqa: S608 - checked above
        f"WHERE application_name = '{name}'",
    )
    return f"terminated {ended} leftover connection(s)"


HOG_PREFIX = "pytest_chaos_hog_"


def _postgres_services(dead: DeadRuns) -> Iterator[Service]:
    """The services of the dead runs' projects that run PostgreSQL (a main process
    called postgres, as the engine reports it)."""
    from ..targets.compose import ComposeProject

    for name, container in dead_runs_containers(dead):
        argv = [str(container.attrs.get("Path") or ""), *(container.attrs.get("Args") or [])]
        if not any("postgres" in word for word in argv):
            continue
        project = ComposeProject(name.split("/")[0], client=dead.client)
        yield Service(project, name.split("/")[1], container.id)


@sweeper("postgres-connection")
def _sweep_hogs(dead: DeadRuns) -> list[str]:
    """End the connections a dead run's hog held (named after the run)."""
    said = []
    for service in _postgres_services(dead):
        for run in dead.runs:
            if not dead.owns(run, service.project.name) or not run.isalnum():
                continue
            try:
                ended = int(
                    psql(
                        service,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "  # noqa: S608 - run ids are alphanumeric
                        f"WHERE application_name = '{HOG_PREFIX}{run}'",
                    )
                    or 0
                )
            except Exception as exc:  # noqa: BLE001 - said; the sweep goes on
                said.append(f"skipped {service.label}: {type(exc).__name__}: {exc}")
                break
            if ended:
                said.append(f"swept {service.label}: {ended} connection(s) of run {run}'s hog")
    return said


@sweeper("postgres-setting")
def _sweep_settings(dead: DeadRuns) -> list[str]:
    """Say where max_connections is set by ALTER SYSTEM in a project a dead run
    touched: nothing there proves who set it, so it is named, not changed."""
    said = []
    for service in _postgres_services(dead):
        try:
            value, _source, sourcefile = _current(service)
        except Exception as exc:  # noqa: BLE001 - said; the sweep goes on
            said.append(f"skipped {service.label}: {type(exc).__name__}: {exc}")
            continue
        if sourcefile.endswith("postgresql.auto.conf"):
            said.append(
                f"left {service.label}: max_connections = {value} by ALTER SYSTEM; a dead run "
                "touched this project, but nothing proves it set it (ALTER SYSTEM RESET "
                "max_connections and a restart undo it, if it did)"
            )
    return said


# -- chaos.<fault> -----------------------------------------------------------------------


@fault(
    "max_connections",
    journal=("pg-max-connections",),
    leaves=("postgres-setting",),
    requires=("postgres",),
    example="chaos.max_connections({service}, 30)",
)
def _chaos_max_connections(
    chaos: Chaos, service: str, value: int
) -> AbstractContextManager[MaxConnectionsHandle]:
    """Restart PostgreSQL ``service`` with a lower max_connections (ALTER SYSTEM
    through psql as the superuser inside the container). Undo: the previous setting
    and another restart."""
    return max_connections(chaos.service(service), value)


@fault(
    "connection_hog",
    journal=("pg-hog",),
    leaves=("postgres-connection",),
    requires=("postgres",),
    example="chaos.connection_hog({service}, {dsn}, 5)",
)
def _chaos_connection_hog(
    chaos: Chaos, service: str, dsn: str, connections: int
) -> AbstractContextManager[HogHandle]:
    """Hold ``connections`` idle connections to PostgreSQL ``service`` at ``dsn``,
    named after the run. Undo: closed."""
    return connection_hog(chaos.service(service), dsn, connections)
