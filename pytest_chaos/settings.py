"""pytest-chaos's settings: the help text of every option, where each setting's
value comes from (command line > environment > ini), and the checks made on them
before any test runs (a bad value is a usage error naming where it came from)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .units import parse_duration

if TYPE_CHECKING:
    from .report import SummaryColumn

HELP_PROJECT = (
    "attach to this running compose project instead of starting one through "
    "pytest-docker (env CHAOS_PROJECT)"
)
HELP_JOURNAL = (
    "folder of the crash-safe journal of faults in force (env CHAOS_JOURNAL; default "
    "/var/lib/pytest-chaos/journal as root, else ~/.local/state/pytest-chaos/journal)"
)
HELP_CLEANUP = "undo every fault the journal holds from runs that died (kill -9), then exit"
HELP_JUNIT_STRICT = (
    "keep --junitxml valid under the Jenkins xunit plugin's junit-10.xsd, which allows no "
    "properties in a testcase: each test's figures become testsuite properties named "
    "'<test id>::<figure>', and the file is written as junit_family xunit2"
)
HELP_REPORT = (
    "write an HTML report (DIR/index.html, a timeline picture per experiment) and the "
    "same data as JSON (DIR/report.json)"
)
HELP_LIVE = (
    "while a fault is in force, print a status line (faults, time in force, requests "
    "failed) every this many seconds; 0 turns it off (default 5)"
)
HELP_DRY_RUN = (
    "list the faults each selected test would inject (read from its source) and exit: "
    "no test runs, no stack starts, the journal is not replayed"
)
HELP_COLUMNS = (
    "columns of your own figures in the end-of-run table and the HTML report, a line each: "
    "'TITLE = FIGURE[/FIGURE...]', e.g. 'orders ack/lost = orders_acknowledged/orders_lost'"
)
HELP_REPLAY = (
    "run this fault schedule (as the report prints it: 'pause postgres at 0s for 1.5s; "
    "kill redis at 0.5s for 0.5s') in every selected chaos.explore instead of searching"
)
HELP_BACKEND = (
    "where the system under test runs: 'compose' (one Docker engine, default) or 'swarm' "
    "(a Swarm of several engines on this machine, the stack file of ini "
    "chaos_swarm_stack_file deployed on it; only tests marked chaos_backends('swarm') "
    "are selected) (env CHAOS_BACKEND)"
)
HELP_SWARM_NODES = "how many nodes the local swarm has, 1 to 9 (env CHAOS_SWARM_NODES; default 3)"
HELP_SWARM_STACK = (
    "the stack file (docker stack deploy) the swarm backend deploys, relative to the "
    "rootdir (env CHAOS_SWARM_STACK_FILE)"
)
HELP_SWARM_MANAGER = (
    "attach the swarm backend to a running swarm instead of starting one: the Docker API "
    "of one of its managers, e.g. tcp://10.0.0.5:2376 (DOCKER_TLS_VERIFY and "
    "DOCKER_CERT_PATH apply) or unix:///run/docker.sock (env CHAOS_SWARM_MANAGER)"
)
HELP_SWARM_STACK_NAME = (
    "with --chaos-swarm-manager: the deployed stack the experiments run against; it is "
    "neither deployed nor removed by pytest-chaos (env CHAOS_SWARM_STACK)"
)
HELP_SWARM_ENGINE = (
    "with --chaos-swarm-manager: NODE=URL, the Docker API of that node's own engine, "
    "through which faults find its tasks (repeat per node; ini chaos_swarm_engines, one "
    "per line). Faults act through the kernel: a node's tasks are reachable when pytest "
    "runs on that node's machine"
)
BACKENDS = ("compose", "swarm")
HELP_TIMEOUT = (
    "deadline for a service to be running and healthy again after a fault, and for the "
    "stack to start, e.g. 60s (env CHAOS_TIMEOUT; default 60s)"
)


@dataclass
class ChaosSettings:
    project: str | None
    timeout: float
    journal: Path
    backend: str = "compose"
    swarm_nodes: int = 3
    swarm_stack_file: Path | None = None
    #: Attached swarm: a manager's Docker API, the stack, each node's engine API.
    swarm_manager: str | None = None
    swarm_stack: str | None = None
    swarm_engines: dict[str, str] = field(default_factory=dict)


def setting(config: pytest.Config, name: str) -> tuple[str | None, str]:
    """A setting's value and where it came from: command line > environment > ini."""
    flag = f"--chaos-{name.replace('_', '-')}"
    value = config.getoption(flag)
    if value is not None:
        return str(value), flag
    env = os.environ.get(f"CHAOS_{name.upper()}")
    if env:
        return env, f"environment variable CHAOS_{name.upper()}"
    ini = config.getini(f"chaos_{name}")
    if ini:
        return str(ini), f"ini option chaos_{name}"
    return None, ""


def read_settings(config: pytest.Config) -> ChaosSettings:
    from .errors import ConfigurationError

    timeout_text, source = setting(config, "timeout")
    timeout = 60.0
    if timeout_text is not None:
        try:
            timeout = parse_duration(timeout_text, name="timeout")
        except ConfigurationError as exc:
            raise pytest.UsageError(f"{source}: {exc}") from None
    project, _ = setting(config, "project")
    journal, _ = setting(config, "journal")
    backend, source = setting(config, "backend")
    if backend is not None and backend not in BACKENDS:
        raise pytest.UsageError(
            f"{source}: the backend is one of {', '.join(BACKENDS)}, not {backend!r}."
        )
    nodes_text, source = setting(config, "swarm_nodes")
    nodes = 3
    if nodes_text is not None:
        if not nodes_text.isdigit() or not 1 <= int(nodes_text) <= 9:
            raise pytest.UsageError(
                f"{source}: a local swarm has 1 to 9 nodes, not {nodes_text!r}."
            )
        nodes = int(nodes_text)
    stack, _ = setting(config, "swarm_stack_file")
    manager, manager_source = setting(config, "swarm_manager")
    stack_name, stack_source = setting(config, "swarm_stack")
    engines = _engines(config)
    _check_replay(config)
    if manager is not None:
        if (backend or "compose") != "swarm":
            raise pytest.UsageError(
                f"{manager_source} attaches the swarm backend: add --chaos-backend swarm."
            )
        if not stack_name:
            raise pytest.UsageError(
                f"{manager_source}: name the deployed stack to run against with "
                "--chaos-swarm-stack NAME."
            )
    elif stack_name or engines:
        what = stack_source or "--chaos-swarm-engine"
        raise pytest.UsageError(
            f"{what} applies to an attached swarm: add --chaos-swarm-manager URL."
        )
    return ChaosSettings(
        project=project,
        timeout=timeout,
        journal=Path(journal) if journal else default_journal(),
        backend=backend or "compose",
        swarm_nodes=nodes,
        swarm_stack_file=Path(config.rootpath, stack) if stack else None,
        swarm_manager=manager,
        swarm_stack=stack_name,
        swarm_engines=engines,
    )


#: Set once a search has taken --chaos-replay: a run where none did says so.
REPLAY_TAKEN = pytest.StashKey[bool]()


def _check_replay(config: pytest.Config) -> None:
    """--chaos-replay must be a schedule: one that cannot be read would otherwise
    leave the search to run as if no replay had been asked for."""
    text = config.getoption("--chaos-replay")
    if text is None:
        return
    from .errors import ConfigurationError
    from .schedule import Schedule

    if not text.strip():
        raise pytest.UsageError(
            "--chaos-replay is empty: give the schedule a search printed (e.g. 'pause "
            "postgres at 0s for 1.5s; kill redis at 0.5s for 0.5s'), or 'nothing'."
        )
    try:
        Schedule.parse(text)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"--chaos-replay: {exc}") from None


def _engines(config: pytest.Config) -> dict[str, str]:
    """--chaos-swarm-engine NODE=URL (repeated), else the ini's lines."""
    given = config.getoption("--chaos-swarm-engine") or []
    source = "--chaos-swarm-engine"
    if not given:
        given = list(config.getini("chaos_swarm_engines"))
        source = "ini option chaos_swarm_engines"
    engines: dict[str, str] = {}
    for spec in given:
        node, eq, url = str(spec).partition("=")
        if not (eq and node.strip() and "://" in url):
            raise pytest.UsageError(
                f"{source}: {spec!r} is not NODE=URL (e.g. node2=tcp://10.0.0.6:2376)."
            )
        engines[node.strip()] = url.strip()
    return engines


def default_journal() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pytest-chaos/journal")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pytest-chaos" / "journal"


def options_given(config: pytest.Config) -> bool:
    """Whether any --chaos-* option (or its environment variable) was given; the ini
    alone does not count: it is the project's configuration, not a request."""
    if any(
        config.getoption(f"--chaos-{name.replace('_', '-')}") is not None
        or os.environ.get(f"CHAOS_{name.upper()}")
        for name in (
            "project", "timeout", "journal", "backend", "swarm_nodes", "swarm_stack_file",
            "swarm_manager", "swarm_stack", "swarm_engine",
        )
    ):  # fmt: skip
        return True
    if config.getoption("--chaos-replay") is not None:
        return True
    return config.getoption("--chaos-report") is not None or any(
        config.getoption(flag)
        for flag in ("--chaos-cleanup", "--chaos-dry-run", "--chaos-junit-strict")
    )


def summary_columns(config: pytest.Config) -> list[SummaryColumn]:
    lines = config.getini("chaos_summary_columns")
    if not lines:
        return []
    from .errors import ConfigurationError
    from .report import parse_columns

    try:
        return parse_columns(lines)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"ini option {exc}") from None


def check_project(config: pytest.Config, name: str) -> None:
    """A project to attach to that Docker does not have is a usage error, found before
    any test runs."""
    from .errors import DockerUnavailable
    from .targets.compose import project_names
    from .targets.engine import docker_client

    _, source = setting(config, "project")
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        raise pytest.UsageError(f"{source} {name}: {exc}") from None
    with contextlib.closing(client):
        known = project_names(client)
    if name not in known:
        raise pytest.UsageError(
            f"{source}: Docker has no compose project named {name!r}; the projects it has: "
            f"{', '.join(known) or 'none (start yours with docker compose up -d)'}."
        )


def strict_junit_writer(config: pytest.Config) -> Any:
    """pytest's JUnit writer, set to the xunit2 family (xunit1's testcase ``file`` and
    ``line`` attributes are not in junit-10.xsd); None without --junitxml."""
    if not config.option.xmlpath:
        return None
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest that moved its JUnit writer
        raise pytest.UsageError(
            "--chaos-junit-strict cannot find pytest's JUnit writer in this pytest version; "
            "run without it (figures stay testcase properties)."
        ) from None
    writer = config.stash.get(xml_key, None)
    if writer is not None:
        writer.family = "xunit2"
    return writer


def add_options(parser: pytest.Parser) -> None:
    """The --chaos-* options and chaos_* ini settings."""
    group = parser.getgroup("chaos", "pytest-chaos: chaos experiments as tests")
    group.addoption("--chaos-project", default=None, metavar="NAME", help=HELP_PROJECT)
    group.addoption("--chaos-timeout", default=None, metavar="DURATION", help=HELP_TIMEOUT)
    group.addoption("--chaos-journal", default=None, metavar="DIR", help=HELP_JOURNAL)
    group.addoption("--chaos-cleanup", action="store_true", default=False, help=HELP_CLEANUP)
    group.addoption("--chaos-dry-run", action="store_true", default=False, help=HELP_DRY_RUN)
    group.addoption("--chaos-report", default=None, metavar="DIR", help=HELP_REPORT)
    group.addoption(
        "--chaos-live-interval", default=5.0, metavar="SECONDS", type=float, help=HELP_LIVE
    )
    group.addoption("--chaos-replay", default=None, metavar="SCHEDULE", help=HELP_REPLAY)
    group.addoption(
        "--chaos-junit-strict", action="store_true", default=False, help=HELP_JUNIT_STRICT
    )
    group.addoption("--chaos-backend", default=None, metavar="NAME", help=HELP_BACKEND)
    group.addoption("--chaos-swarm-nodes", default=None, metavar="N", help=HELP_SWARM_NODES)
    group.addoption("--chaos-swarm-stack-file", default=None, metavar="PATH", help=HELP_SWARM_STACK)
    group.addoption("--chaos-swarm-manager", default=None, metavar="URL", help=HELP_SWARM_MANAGER)
    group.addoption("--chaos-swarm-stack", default=None, metavar="NAME", help=HELP_SWARM_STACK_NAME)
    group.addoption(
        "--chaos-swarm-engine", action="append", default=None, metavar="NODE=URL",
        help=HELP_SWARM_ENGINE,
    )  # fmt: skip
    parser.addini("chaos_project", HELP_PROJECT, default=None)
    parser.addini("chaos_backend", HELP_BACKEND, default=None)
    parser.addini("chaos_swarm_nodes", HELP_SWARM_NODES, default=None)
    parser.addini("chaos_swarm_stack_file", HELP_SWARM_STACK, default=None)
    parser.addini("chaos_swarm_manager", HELP_SWARM_MANAGER, default=None)
    parser.addini("chaos_swarm_stack", HELP_SWARM_STACK_NAME, default=None)
    parser.addini("chaos_swarm_engines", HELP_SWARM_ENGINE, type="linelist", default=[])
    parser.addini("chaos_timeout", HELP_TIMEOUT, default=None)
    parser.addini("chaos_journal", HELP_JOURNAL, default=None)
    parser.addini("chaos_summary_columns", HELP_COLUMNS, type="linelist", default=[])
