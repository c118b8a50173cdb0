"""Every registered fault, from its registration alone: a stack made from the registry
(a container of its own for each fault, PostgreSQL where the fault needs it, a peer
where its example names one), every fault's example applied at once in an inner
pytest and undone whichever way that test ends (pass, failure, exception, Ctrl-C,
SIGTERM), and each fault left in force by a pytest killed with ``kill -9`` then
undone by ``--chaos-cleanup``. The stack is compared whole before and after
(stack_snapshot). A fault registered tomorrow gets its container and its cases here
with no edit; a swarm's node faults have their own (test_swarm_node_faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from stack_snapshot import differences, snapshot

from pytest_chaos import registry, wait_for_recovery
from pytest_chaos.targets.compose import ComposeProject

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAULTS = {
    name: kind
    for name, kind in sorted(registry.faults().items())
    if kind.module.startswith("pytest_chaos.") and "local-swarm" not in kind.requires
}
PASSWORD = "matrix"  # noqa: S105 - a throwaway stack on loopback
HEALTH = {
    "redis": '["CMD", "redis-cli", "ping"]',
    "postgres": '["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "matrix", "-d", "matrix"]',
}


def service_name(fault: str) -> str:
    return fault.replace("_", "-")


def compose_file() -> str:
    """A service per fault (and its peer, where its example names one)."""
    lines = ['version: "2.4"', "services:"]
    for name, kind in FAULTS.items():
        image = "postgres" if "postgres" in kind.requires else "redis"
        names = [service_name(name)] + (
            [f"{service_name(name)}-peer"] if "{peer}" in kind.example else []
        )
        for service in names:
            lines += [
                f"  {service}:",
                f"    image: pytest-chaos/exchange-{image}:dev",
                "    restart: unless-stopped",
                "    healthcheck:",
                f"      test: {HEALTH[image]}",
                "      interval: 1s",
                "      timeout: 2s",
                "      retries: 3",
            ]
            if image == "postgres":
                lines += [
                    "    environment:",
                    "      POSTGRES_DB: matrix",
                    "      POSTGRES_USER: matrix",
                    f"      POSTGRES_PASSWORD: {PASSWORD}",
                    "    ports:",
                    '      - "127.0.0.1::5432"',
                ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("every-fault")
    (folder / "docker-compose.yml").write_text(compose_file())
    name = f"chaos-every-fault-{os.getpid()}"
    compose = ["docker-compose", "-p", name, "-f", str(folder / "docker-compose.yml")]
    subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=300)
    try:
        project = ComposeProject(name)

        def healthy() -> bool:
            return all(project.service(s).is_healthy() for s in project.service_names())

        # Polled: a container per fault (and peers) become healthy in seconds.
        wait_for_recovery(healthy, timeout=180, interval=0.5, what="the matrix stack")
        yield project
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "0"], check=False, capture_output=True)


def call(project: ComposeProject, name: str) -> str:
    """The fault's example, on its own container."""
    service = service_name(name)
    roles = {"service": service, "peer": f"{service}-peer"}
    if "{dsn}" in FAULTS[name].example:
        host, port = project.service(service).published_port(5432)
        roles["dsn"] = f"postgresql://matrix:{PASSWORD}@{host}:{port}/matrix"
    return FAULTS[name].call(**roles)


# No traffic flows: the test is of the undo, not of the system, so its verdict does
# not hang on evidence that the faults bit.
HEADER = "import pathlib, time\nimport pytest\n\n@pytest.mark.effect_optional\ndef test_x(chaos):\n"


def every_fault(project: ComposeProject) -> str:
    return "".join(f"    {call(project, name)}\n" for name in FAULTS)


def args(project: ComposeProject, journal) -> list[str]:
    return [f"--chaos-project={project.name}", f"--chaos-journal={journal}"]


ENDINGS = {
    "pass": ("", {"passed": 1}),
    "failure": ("assert False, 'the experiment failed'", {"failed": 1}),
    "exception": ("raise ConnectionError('the experiment crashed')", {"failed": 1}),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_registered_fault_is_undone_however_the_test_ends(pytester, matrix, tmp_path, ending):
    body, outcome = ENDINGS[ending]
    before = snapshot(matrix)
    pytester.makepyfile(HEADER + every_fault(matrix) + (f"    {body}\n" if body else ""))
    result = pytester.runpytest_subprocess(*args(matrix, tmp_path))
    result.assert_outcomes(**outcome)
    assert differences(before, snapshot(matrix)) == []
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_every_registered_fault_is_undone_when_pytest_is_interrupted(
    pytester, matrix, tmp_path, sig, inner_pytest
):
    before = snapshot(matrix)
    marker = tmp_path / "in-force"
    pytester.makepyfile(
        HEADER
        + every_fault(matrix)
        + f"    pathlib.Path({str(marker)!r}).write_text('yes')\n"
        + "    time.sleep(300)  # the dwell: the signal comes during it\n"
    )
    proc = inner_pytest.start(pytester.path, *args(matrix, tmp_path / "journal"))
    inner_pytest.wait(proc, marker.exists, what="every fault in force", timeout=180)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert differences(before, snapshot(matrix)) == [], out
    assert list((tmp_path / "journal").glob("*.json")) == []


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_fault_left_by_kill_9_is_undone_by_the_cleanup(pytester, matrix, tmp_path, name):
    before = snapshot(matrix)
    marker = tmp_path / "in-force"
    pytester.makepyfile(
        HEADER
        + f"    {call(matrix, name)}\n"
        + f"    pathlib.Path({str(marker)!r}).write_text('yes')\n"
        + "    time.sleep(300)  # the dwell: kill -9 comes during it\n"
    )
    journal = tmp_path / "journal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args(matrix, journal)],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def in_force() -> bool:
            assert proc.poll() is None, "the inner pytest ended before its fault was in force"
            return marker.exists()

        wait_for_recovery(in_force, timeout=120, interval=0.05, transient=(), what=name)
    finally:
        proc.kill()
        proc.wait()
    result = pytester.runpytest_subprocess(*args(matrix, journal), "--chaos-cleanup")
    assert result.ret == 0, result.stdout.str()
    assert differences(before, snapshot(matrix)) == [], result.stdout.str()
    assert list(journal.glob("*.json")) == []
