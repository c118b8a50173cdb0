"""Points pytest-chaos at the notes stack: pytest-docker starts docker-compose.yml,
pytest-chaos waits until it is healthy, and the ``notes`` fixture gives the tests the
service's address, its steady-state probe, a write flow and a data-loss lookup.

Only pytest-chaos's public API is used here, as a project of your own would."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from pytest_chaos import ComposeProject, Flow, Request

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A fixed host port for this session: Docker would pick a new one each time the web
# container restarts, and the experiments restart it.
os.environ.setdefault("NOTES_PORT", str(_free_port()))


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(HERE / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"notes-chaos-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    # Compose v2 is `docker compose`; Debian bookworm ships v1 as `docker-compose`.
    return "docker-compose" if shutil.which("docker-compose") else "docker compose"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d --build"]


class Notes:
    """The notes service, seen from the host."""

    def __init__(self, project: ComposeProject) -> None:
        host, port = project.service("web").published_port(8000)
        self.url = f"http://{host}:{port}"

    def ready(self) -> bool:
        """The steady state: the service answers and its store too."""
        return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200

    def add(self, text: str) -> str:
        response = httpx.post(f"{self.url}/notes", json={"text": text}, timeout=5.0)
        response.raise_for_status()
        return str(response.json()["id"])

    def lookup(self, ids: list[str]) -> list[str]:
        """Which of ``ids`` the service still has."""
        response = httpx.post(f"{self.url}/notes/lookup", json=ids, timeout=10.0)
        response.raise_for_status()
        return [str(i) for i in response.json()]

    def writes(self, rate: float) -> Flow:
        """A flow of new notes; each 201 acknowledges the note's id."""
        return Flow(
            "writes",
            rate=rate,
            build=lambda n: Request("POST", f"{self.url}/notes", json={"text": f"note {n}"}),
            ack=lambda r: str(r.json()["id"]) if r.status_code == 201 else None,
        )

    def reads(self, note_id: str, rate: float, *, digest: bool = False) -> Flow:
        path = f"/notes/{note_id}/digest" if digest else f"/notes/{note_id}"
        return Flow(
            "digests" if digest else "reads",
            rate=rate,
            build=lambda n: Request("GET", f"{self.url}{path}"),
        )


@pytest.fixture
def notes(chaos_project: ComposeProject) -> Notes:
    """The running, healthy notes stack (chaos_project waited for its health checks)."""
    return Notes(chaos_project)


@pytest.fixture
def note_id(notes: Notes) -> str:
    return notes.add(f"a note to read {uuid.uuid4().hex[:8]}")
