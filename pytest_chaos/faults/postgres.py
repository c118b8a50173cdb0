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
from ..registry import fault, undoer
from ..targets.compose import Service
from .base import Effect, FaultHandle, journaled, journaled_service

if TYPE_CHECKING:
    import psycopg

    from ..chaos import Chaos


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


def _restart(service: Service, timeout: float) -> float:
    start = time.monotonic()
    service.container().restart(timeout=10)
    service.ensure_running_and_healthy(timeout=timeout, start_after=timeout)
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
            _restart(service, restart_timeout)
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
    name = f"pytest_chaos_hog_{journal.run_id if journal else 'norun'}"
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


# -- chaos.<fault> -----------------------------------------------------------------------


@fault("max_connections")
def _chaos_max_connections(
    chaos: Chaos, service: str, value: int
) -> AbstractContextManager[MaxConnectionsHandle]:
    """Restart PostgreSQL ``service`` with a lower max_connections."""
    return max_connections(chaos.service(service), value)


@fault("connection_hog")
def _chaos_connection_hog(
    chaos: Chaos, service: str, dsn: str, connections: int
) -> AbstractContextManager[HogHandle]:
    """Hold ``connections`` idle connections to PostgreSQL ``service`` at ``dsn``."""
    return connection_hog(chaos.service(service), dsn, connections)
