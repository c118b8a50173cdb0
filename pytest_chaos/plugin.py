"""pytest hooks and fixtures of pytest-chaos. Only wiring lives here; the work is
done by the modules it imports lazily.

Out of the way when not used: a session whose selected tests use no chaos fixture and
that was given no ``--chaos-*`` option imports no fault library, asks Docker nothing,
prints no header and installs no signal handler. Only a journal that holds entries is
replayed in every session (and says so)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .units import parse_duration

if TYPE_CHECKING:
    from .chaos import Chaos
    from .journal import Journal
    from .live import LiveLine
    from .observe.bpf import BpfProbes
    from .report import SummaryColumn, TestResult
    from .targets.compose import ComposeProject

#: The plugin's own markers; a project adds its own (e.g. per service) in its ini.
MARKERS = {
    "network": "network faults: partitions, latency, loss (needs root)",
    "resources": "resource faults: memory, CPU, disk I/O limits",
    "bpf": "asserts on figures captured by BPF probes",
    "root": "needs root (euid 0); skipped with the reason otherwise",
    "slow": "takes more than a few seconds",
    "experiment(id)": "a chaos experiment, with the guide's number as id (e.g. '01')",
}

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
HELP_TIMEOUT = (
    "deadline for a service to be running and healthy again after a fault, and for the "
    "stack to start, e.g. 60s (env CHAOS_TIMEOUT; default 60s)"
)


@dataclass
class ChaosSettings:
    project: str | None
    timeout: float
    journal: Path


#: The fixtures that make a test a chaos test.
CHAOS_FIXTURES = frozenset({"chaos", "bpf", "chaos_project"})


@dataclass(eq=False)  # registered with pluggy, which keeps plugins in sets
class ChaosPlugin:
    """Session state: settings and the figures each test recorded."""

    settings: ChaosSettings
    #: True once a selected test uses a chaos fixture or a --chaos-* option was given.
    in_use: bool = False
    _journal: Journal | None = None
    #: Each test's outcome and figures, by node id.
    results: dict[str, TestResult] = field(default_factory=dict)
    #: pytest's JUnit writer when --chaos-junit-strict moves figures to the suite.
    junit: Any = None
    #: The live status line (None: off, or no terminal).
    live: LiveLine | None = None
    #: The project's own columns of the end-of-run table (ini chaos_summary_columns).
    columns: list[SummaryColumn] = field(default_factory=list)
    #: Each test's timeline (JSON-ready), for --chaos-report.
    timelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    #: Journal entries of kinds unknown at session start wait for collection.
    deferred: bool = False

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            from .journal import Journal, new_run_id

            self._journal = Journal(self.settings.journal, new_run_id())
        return self._journal

    def journal_has_entries(self) -> bool:
        """Whether the journal folder holds any entry (without importing the journal)."""
        try:
            with os.scandir(self.settings.journal) as found:
                return any(e.name.endswith(".json") for e in found)
        except OSError:
            return False

    def forget_this_run(self) -> None:
        """Every fault of this run was undone: drop its record, so nothing of it is
        left for a sweep to find (nothing to do when it journaled nothing)."""
        if self._journal is not None:
            self._journal.forget_run(self._journal.run_id)

    def replay_journal(self, write: Callable[[str], None], *, defer_unknown: bool = False) -> bool:
        """Undo what runs that died left in force; say what was done. False if some
        entry could not be undone (it stays in the journal). ``defer_unknown``: an entry
        whose kind has no undo registered yet is left, silently, for a replay after
        collection (its undo may be defined in a test module)."""
        ok = True
        self.deferred = False
        for done in self.journal.replay():
            entry = done.entry
            origin = f"left by run {entry.run_id} (pytest pid {entry.owner_pid}, gone)"
            if done.unknown_kind and defer_unknown:
                self.deferred = True
            elif done.error is None:
                write(f"pytest-chaos: undid {entry.description} {origin}: {done.outcome}")
            else:
                ok = False
                write(
                    f"pytest-chaos: could not undo {entry.description} {origin}: {done.error}; "
                    f"it stays in {entry.path} for the next run or pytest --chaos-cleanup"
                )
        return ok

    @pytest.hookimpl(tryfirst=True)  # before junitxml reads the teardown report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.in_use:
            return
        from .report import TestResult

        result = self.results.setdefault(report.nodeid, TestResult(report.nodeid))
        result.duration_s += report.duration
        if report.failed:
            result.outcome = "failed" if report.when == "call" else "error"
            result.message = (result.message + "\n" + report.longreprtext).strip()[-6000:]
        elif report.skipped and result.outcome == "passed":
            # An expected failure (xfail) that failed as expected is not a skip.
            result.outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            result.message = report.longreprtext[-2000:]
        if report.when == "teardown":
            recorded = {str(k): str(v) for k, v in report.user_properties}
            result.figures = recorded
            if self.junit is not None:
                # Strict JUnit: the figures go to the suite, keyed by the test's id.
                for name, value in recorded.items():
                    self.junit.add_global_property(f"{report.nodeid}::{name}", value)
                report.user_properties = []

    def write_report(self, config: pytest.Config) -> Path | None:
        directory = config.getoption("--chaos-report")
        if not directory:
            return None
        from . import htmlreport
        from .environment import environment

        tests = [
            {
                "nodeid": r.nodeid,
                "outcome": r.outcome,
                "duration_s": round(r.duration_s, 3),
                "message": r.message,
                "figures": r.figures,
                "timeline": self.timelines.get(r.nodeid),
            }
            for r in self.results.values()
            if r.figures or r.nodeid in self.timelines
        ]
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        run = htmlreport.run_info(environment().header_lines(), self.started, counts, self.columns)
        return htmlreport.write(Path(directory), run, tests)

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, config: pytest.Config
    ) -> None:
        if not self.in_use:
            return
        from .report import table

        page = self.write_report(config)
        if page is not None:
            terminalreporter.write_sep("-", f"chaos report: {page}")

        shown = [r for r in self.results.values() if r.figures]
        if not shown:
            return
        terminalreporter.section("chaos experiments")
        for line in table(shown, self.columns):
            terminalreporter.write_line(line)
        terminalreporter.section("chaos figures")
        for result in shown:
            terminalreporter.write_line(result.nodeid)
            for name, value in result.figures.items():
                terminalreporter.write_line(f"    {name} = {value}")


PLUGIN_KEY = pytest.StashKey[ChaosPlugin]()


def pytest_addoption(parser: pytest.Parser) -> None:
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
    group.addoption(
        "--chaos-junit-strict", action="store_true", default=False, help=HELP_JUNIT_STRICT
    )
    parser.addini("chaos_project", HELP_PROJECT, default=None)
    parser.addini("chaos_timeout", HELP_TIMEOUT, default=None)
    parser.addini("chaos_journal", HELP_JOURNAL, default=None)
    parser.addini("chaos_summary_columns", HELP_COLUMNS, type="linelist", default=[])


def _setting(config: pytest.Config, name: str) -> tuple[str | None, str]:
    """A setting's value and where it came from: command line > environment > ini."""
    value = config.getoption(f"--chaos-{name}")
    if value is not None:
        return str(value), f"--chaos-{name}"
    env = os.environ.get(f"CHAOS_{name.upper()}")
    if env:
        return env, f"environment variable CHAOS_{name.upper()}"
    ini = config.getini(f"chaos_{name}")
    if ini:
        return str(ini), f"ini option chaos_{name}"
    return None, ""


def _settings(config: pytest.Config) -> ChaosSettings:
    from .errors import ConfigurationError

    timeout_text, source = _setting(config, "timeout")
    timeout = 60.0
    if timeout_text is not None:
        try:
            timeout = parse_duration(timeout_text, name="timeout")
        except ConfigurationError as exc:
            raise pytest.UsageError(f"{source}: {exc}") from None
    project, _ = _setting(config, "project")
    journal, _ = _setting(config, "journal")
    return ChaosSettings(
        project=project,
        timeout=timeout,
        journal=Path(journal) if journal else _default_journal(),
    )


def _default_journal() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pytest-chaos/journal")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pytest-chaos" / "journal"


def _options_given(config: pytest.Config) -> bool:
    """Whether any --chaos-* option (or its environment variable) was given; the ini
    alone does not count: it is the project's configuration, not a request."""
    if any(
        config.getoption(f"--chaos-{name}") is not None or os.environ.get(f"CHAOS_{name.upper()}")
        for name in ("project", "timeout", "journal")
    ):
        return True
    return config.getoption("--chaos-report") is not None or any(
        config.getoption(flag)
        for flag in ("--chaos-cleanup", "--chaos-dry-run", "--chaos-junit-strict")
    )


@pytest.hookimpl(trylast=True)  # after junitxml made its writer
def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    settings = _settings(config)
    if config.getoption("--chaos-live-interval") < 0:
        raise pytest.UsageError(
            "--chaos-live-interval must be 0 (off) or a positive number of seconds, not "
            f"{config.getoption('--chaos-live-interval'):g}."
        )
    if settings.project and not config.getoption("--chaos-dry-run"):
        _check_project(config, settings.project)
    plugin = ChaosPlugin(settings, in_use=_options_given(config))
    plugin.columns = _summary_columns(config)
    if config.getoption("--chaos-junit-strict"):
        plugin.junit = _strict_junit_writer(config)
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "pytest-chaos-session")


def _summary_columns(config: pytest.Config) -> list[SummaryColumn]:
    lines = config.getini("chaos_summary_columns")
    if not lines:
        return []
    from .errors import ConfigurationError
    from .report import parse_columns

    try:
        return parse_columns(lines)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"ini option {exc}") from None


def _check_project(config: pytest.Config, name: str) -> None:
    """A project to attach to that Docker does not have is a usage error, found before
    any test runs."""
    from .errors import DockerUnavailable
    from .targets.compose import docker_client, project_names

    _, source = _setting(config, "project")
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


def _strict_junit_writer(config: pytest.Config) -> Any:
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


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("--chaos-cleanup"):
        return None
    # Runs before pytest_configure: build what the cleanup needs from the options.
    plugin = ChaosPlugin(_settings(config), in_use=True)
    lines: list[str] = []
    ok = plugin.replay_journal(lines.append)
    swept_ok, swept = _sweep(plugin.journal)
    lines += swept
    for line in lines or [f"pytest-chaos: nothing to undo in {plugin.journal.directory}"]:
        sys.stdout.write(line + "\n")
    return 0 if ok and swept_ok else 1


def _sweep(journal: Journal) -> tuple[bool, list[str]]:
    """Remove what the journal's dead runs created and it has no entry for; forget
    each dead run once nothing of it is left. False if the sweep could not run."""
    from .errors import ChaosError
    from .faults.network import sweep_tables
    from .targets.compose import docker_client

    dead = journal.dead_runs()
    if not dead:
        return True, []
    try:
        with contextlib.closing(docker_client()) as client:
            said = sweep_tables(client, {run.run_id: run.projects for run in dead})
    except ChaosError as exc:
        return False, [f"pytest-chaos: could not sweep the dead runs' nft tables: {exc}"]
    for run in dead:
        journal.forget_run(run.run_id)
    return True, [f"pytest-chaos: {line}" for line in said]


def pytest_sessionstart(session: pytest.Session) -> None:
    plugin = session.config.stash[PLUGIN_KEY]
    write = _writer(session.config)
    if session.config.getoption("--chaos-dry-run"):
        for entry in plugin.journal.orphans():
            write(
                f"pytest-chaos dry run: the journal holds {entry.description} of a run that "
                "died; a real run (or pytest --chaos-cleanup) would undo it"
            )
        return
    if plugin.in_use or plugin.journal_has_entries():
        plugin.replay_journal(write, defer_unknown=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    plugin = session.config.stash[PLUGIN_KEY]
    if plugin.deferred:
        # Test modules are imported now: the undos they register are known.
        plugin.replay_journal(_writer(session.config))
    if not plugin.in_use:
        plugin.in_use = any(
            CHAOS_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in session.items
        )
    if plugin.in_use:
        _start(session.config, plugin)


def _start(config: pytest.Config, plugin: ChaosPlugin) -> None:
    """What a session that runs chaos tests needs: the header saying what this host
    offers, the live line, and SIGTERM turned into an interruption."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.verbosity >= 0 and not config.option.no_header:
        from .environment import environment

        for line in environment().header_lines():
            reporter.write_line(line)
    interval = config.getoption("--chaos-live-interval")
    if reporter is not None and interval > 0:
        from .live import LiveLine

        capture = config.pluginmanager.get_plugin("capturemanager")

        def live(line: str) -> None:
            # Output during a test is captured; step outside it, as live logging does.
            suspended = (
                capture.global_and_fixture_disabled()
                if capture is not None
                else contextlib.nullcontext()
            )
            with suspended:
                reporter.ensure_newline()
                reporter.write_line(line)

        plugin.live = LiveLine(live, interval)
    _sigterm_interrupts()


def _writer(config: pytest.Config) -> Callable[[str], None]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.write_line if reporter is not None else print


def pytest_sessionfinish(session: pytest.Session) -> None:
    plugin = session.config.stash.get(PLUGIN_KEY, None)
    if plugin is None:
        return
    if plugin.live is not None:
        plugin.live.close()
    plugin.forget_this_run()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    if not session.config.getoption("--chaos-dry-run"):
        return None
    from .dryrun import report

    report(session.items, _writer(session.config))
    return True


def _sigterm_interrupts() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so fixtures' finalizers (and with them
    every undo) run as they do after Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            # A child forked by some library inherited this handler: it must die as
            # a child would, not unwind pytest (and run its finalizers) a second time.
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"pytest-chaos: received signal {signum}; undoing faults")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("experiment")
        if marker is None:
            continue
        if len(marker.args) != 1 or not isinstance(marker.args[0], str) or marker.kwargs:
            raise pytest.UsageError(
                f"{item.nodeid}: write the experiment marker as @pytest.mark.experiment('01') "
                "with the experiment's id as its only argument."
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (euid 0) to act on container processes: run pytest with sudo")
    marker = item.get_closest_marker("experiment")
    if marker is not None:
        item.user_properties.append(("experiment", marker.args[0]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A ChaosError's message already says what the library it was translated from
    said: report it without that library's traceback (frames inside pytest-chaos are
    hidden by ``__tracebackhide__``). UndoFailed keeps its cause: a broken undo's
    traceback is what its author needs."""
    from .errors import ChaosError, UndoFailed

    excinfo = call.excinfo
    if (
        excinfo is not None
        and isinstance(excinfo.value, ChaosError)
        and not isinstance(excinfo.value, UndoFailed)
    ):
        excinfo.value.__suppress_context__ = True
        excinfo.value.__cause__ = None
    return (yield)


@pytest.fixture(scope="session")
def chaos_project(request: pytest.FixtureRequest) -> ComposeProject:
    """The compose project under test: the one named by --chaos-project, or the one
    pytest-docker's ``docker_services`` starts (configure it with pytest-docker's
    fixtures: docker_compose_file, docker_compose_project_name, ...). Waits until
    every container runs and passes its health check."""
    from .targets.compose import attach, start_with_pytest_docker

    plugin = request.config.stash[PLUGIN_KEY]
    settings = plugin.settings
    if settings.project:
        return attach(settings.project, plugin.journal)
    return start_with_pytest_docker(request, timeout=settings.timeout, journal=plugin.journal)


@pytest.fixture
def bpf(request: pytest.FixtureRequest) -> BpfProbes:
    """Kernel probes scoped to services: ``with bpf.watch("trading-api") as probes:``
    runs them while the block runs; ``probes.observation`` holds what they saw, and
    every figure becomes a JUnit property ``bpf_<service>_...``. Where BPF cannot load,
    the figures come from /proc counters and ``observation.degraded`` says why."""
    from .observe.bpf import BpfProbes

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return BpfProbes(lambda: request.getfixturevalue("chaos_project"), record)


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Iterator[Chaos]:
    """Apply faults in this test; every fault is undone when the test ends, last in
    first out, whether it passed, failed or raised."""
    from . import timeline
    from .chaos import Chaos

    plugin = request.config.stash[PLUGIN_KEY]

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    session = Chaos(
        lambda: request.getfixturevalue("chaos_project"),
        timeout=plugin.settings.timeout,
        record=record,
        journal=plugin.journal,
    )
    timeline.begin(request.node.nodeid)
    if plugin.live is not None:
        plugin.live.watch(session)
    try:
        yield session
    finally:
        try:
            session.undo_all()
        finally:
            if plugin.live is not None:
                plugin.live.unwatch()
            done = timeline.end()
            if done is not None:
                plugin.timelines[request.node.nodeid] = done.to_json()
