"""pytest hooks and fixtures of pytest-chaos. Only wiring lives here; the work is
done by the modules it imports lazily.

Out of the way when not used: a session whose selected tests use no chaos fixture and
that was given no ``--chaos-*`` option imports no fault library, asks Docker nothing,
prints no header and installs no signal handler. Only a journal that holds entries is
replayed in every session (and says so)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .errors import hide_chaos_errors as __tracebackhide__  # noqa: F401
from .session import CHAOS_FIXTURES, ChaosPlugin, start
from .settings import (
    BACKENDS,
    add_options,
    check_project,
    options_given,
    read_settings,
    strict_junit_writer,
    summary_columns,
)

if TYPE_CHECKING:
    from .chaos import Chaos
    from .observe.probes import BpfProbes
    from .targets.compose import ComposeProject

#: The plugin's own markers; a project adds its own (e.g. per service) in its ini.
MARKERS = {
    "network": "network faults: partitions, latency, loss (needs root)",
    "resources": "resource faults: memory, CPU, disk I/O limits",
    "bpf": "asserts on figures captured by BPF probes",
    "root": "needs root (euid 0); skipped with the reason otherwise",
    "slow": "takes more than a few seconds",
    "experiment(id)": "a chaos experiment, with the guide's number as id (e.g. '01')",
    "schedule(replay=None, seed=None)": "a search of fault schedules (chaos.explore); "
    "replay= runs that one schedule instead, seed= fixes the search's draws",
    "chaos_backends(*names)": "the backends the test applies to ('compose', 'swarm'); "
    "unmarked: compose only. Under another --chaos-backend the test is deselected",
    "effect_optional": "the verdict stands even if a fault gives no evidence that it took "
    "effect (a test of the undo itself, not of the system)",
}

PLUGIN_KEY = pytest.StashKey[ChaosPlugin]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)  # after junitxml made its writer
def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    settings = read_settings(config)
    if config.getoption("--chaos-live-interval") < 0:
        raise pytest.UsageError(
            "--chaos-live-interval must be 0 (off) or a positive number of seconds, not "
            f"{config.getoption('--chaos-live-interval'):g}."
        )
    if settings.project and not config.getoption("--chaos-dry-run"):
        check_project(config, settings.project)
    plugin = ChaosPlugin(settings, in_use=options_given(config), config=config)
    plugin.columns = summary_columns(config)
    if config.getoption("--chaos-junit-strict"):
        plugin.junit = strict_junit_writer(config)
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "pytest-chaos-session")


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("--chaos-cleanup"):
        return None
    from . import cleanup

    # Runs before pytest_configure: the cleanup builds what it needs from the options.
    return cleanup.run(read_settings(config))


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
        start(session.config, plugin)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _select_backend(config, items)
    for item in items:
        marker = item.get_closest_marker("experiment")
        if marker is None:
            continue
        if len(marker.args) != 1 or not isinstance(marker.args[0], str) or marker.kwargs:
            raise pytest.UsageError(
                f"{item.nodeid}: write the experiment marker as @pytest.mark.experiment('01') "
                "with the experiment's id as its only argument."
            )


def _select_backend(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --chaos-backend swarm, only the chaos tests marked for it (a test that
    uses no chaos fixture runs under any backend)."""
    plugin = config.stash.get(PLUGIN_KEY, None)
    backend = plugin.settings.backend if plugin is not None else "compose"
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("chaos_backends")
        names = marker.args if marker is not None else ("compose",)
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: chaos_backends names {unknown}; the backends are "
                f"{', '.join(BACKENDS)}."
            )
        uses_chaos = bool(CHAOS_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        (keep if backend in names or not uses_chaos else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
    report = yield
    session = getattr(item, "funcargs", {}).get("chaos")
    if call.when == "call" and session is not None:
        from .verdicts import judge_effect

        judge_effect(report, session, excinfo, optional=item.get_closest_marker("effect_optional"))
    return report


def _record_offered_load(session: Chaos) -> None:
    """Record what the test's load generators offered and sent, per fault window."""
    from . import timeline
    from .observe.offered import FaultSpan, load_figures

    current = timeline.current()
    if current is None or not current.loads:
        return
    spans = []
    for fault in current.faults:
        handle = fault.handle
        start = getattr(handle, "applied_at", None) or fault.start
        end = getattr(handle, "lifted_at", None) or getattr(handle, "undone_at", None) or fault.end
        spans.append(FaultSpan(fault.label, start, end))
    for name, value in load_figures(current.loads, spans).items():
        session.record(name, value)


def _look_for_collateral(session: Chaos) -> None:
    """Record the services harmed besides the faults' targets; a Docker that cannot
    say is recorded as such, never fatal to the teardown."""
    from .errors import ChaosError

    try:
        session.collateral()
    except (ChaosError, OSError) as exc:
        session.record("collateral", f"unknown ({exc})")
    except Exception as exc:
        if not type(exc).__module__.startswith("docker."):
            raise
        session.record("collateral", f"unknown (Docker: {exc})")


@pytest.fixture(scope="session")
def chaos_project(request: pytest.FixtureRequest) -> ComposeProject:
    """The compose project under test: the one named by --chaos-project, or the one
    pytest-docker's ``docker_services`` starts (configure it with pytest-docker's
    fixtures: docker_compose_file, docker_compose_project_name, ...). Waits until
    every container runs and passes its health check."""
    from .targets.compose import attach, start_with_pytest_docker

    plugin = request.config.stash[PLUGIN_KEY]
    settings = plugin.settings
    if settings.backend == "swarm" and settings.swarm_manager:
        from .targets.swarm_attach import attach as attach_swarm

        return attach_swarm(request, settings, plugin.journal)
    if settings.backend == "swarm":
        from .targets.swarm_deploy import start_local

        return start_local(request, settings, plugin.journal)
    if settings.project:
        return attach(settings.project, plugin.journal)
    return start_with_pytest_docker(request, timeout=settings.timeout, journal=plugin.journal)


@pytest.fixture
def bpf(request: pytest.FixtureRequest) -> BpfProbes:
    """Kernel probes scoped to services: ``with bpf.watch("trading-api") as probes:``
    runs them while the block runs; ``probes.observation`` holds what they saw, and
    every figure becomes a JUnit property ``bpf_<service>_...``. Where BPF cannot load,
    the figures come from /proc counters and ``observation.degraded`` says why."""
    from .observe.probes import BpfProbes

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    plugin = request.config.stash[PLUGIN_KEY]
    return BpfProbes(
        lambda: request.getfixturevalue("chaos_project"), record, on_interrupt=plugin.lift_now
    )


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Iterator[Chaos]:
    """Apply faults in this test; every fault is undone when the test ends, last in
    first out, whether it passed, failed or raised."""
    from . import timeline
    from .chaos import Chaos
    from .faults.nfqueue import prewarm_worker

    plugin = request.config.stash[PLUGIN_KEY]

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    session = Chaos(
        lambda: request.getfixturevalue("chaos_project"),
        timeout=plugin.settings.timeout,
        record=record,
        journal=plugin.journal,
        node=request.node,
    )
    timeline.begin(request.node.nodeid)
    prewarm_worker()
    if plugin.live is not None:
        plugin.live.watch(session)
    plugin.active = session  # what an interruption undoes first
    try:
        yield session
    finally:
        plugin.active = None
        try:
            session.undo_all()
        finally:
            _record_offered_load(session)
            _look_for_collateral(session)
            if plugin.live is not None:
                plugin.live.unwatch()
            done = timeline.end()
            if done is not None:
                data = done.to_json()
                report = request.config.getoption("--chaos-report")
                if report:
                    from . import evidence

                    data["evidence"] = evidence.save(done, Path(report), session.used_project)
                plugin.timelines[request.node.nodeid] = data
