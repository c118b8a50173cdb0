"""The session's state, registered with pytest as a plugin object: settings, whether
chaos is in use at all, the journal (opened on first use), each test's verdict and
figures, and the reports made from them at the end (table, HTML, JSON)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .settings import REPLAY_TAKEN, ChaosSettings

if TYPE_CHECKING:
    from .journal import Journal
    from .live import LiveLine
    from .report import SummaryColumn, TestResult

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
    #: The running test's chaos session (what an interruption undoes first).
    active: Any = None
    #: The running test, and when it started (time.time()).
    current_item: pytest.Item | None = None
    _item_started: float = 0.0
    config: pytest.Config | None = None
    #: What an interruption already lifted before it reached pytest (see lift_now).
    _lifted_early: str | None = None

    def lift_now(self) -> None:
        """An interruption is unwinding through a block whose exit takes seconds (a
        BPF session detaching its probes): lift every fault in force now, before that
        exit runs, as the interruption would once it reached pytest; its report then
        says what was lifted and when."""
        if self._lifted_early is not None or self.active is None:
            return
        from .interruption import interrupted

        session, self.active = self.active, None
        self._lifted_early = interrupted(session)

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
                return any(e.name.endswith((".json", ".tmp")) for e in found)
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
        stale = self.journal.remove_stale_files()
        if stale:
            write(
                f"pytest-chaos: removed {len(stale)} half-written journal file(s) left by a "
                f"pytest that died while writing them: {', '.join(stale)}"
            )
        return ok

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.current_item, self._item_started = item, time.time()
        result = yield
        self.current_item = None  # not reached when the run is interrupted: it stays known
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C or SIGTERM: lift every fault in force first (waits for health put
        off), then cancel the load generators' requests, then wait for health; and
        report the running test as interrupted, in every report."""
        if not self.in_use:
            return
        from . import signals
        from .interruption import interrupted

        own_stop = issubclass(excinfo.type, pytest.Session.Interrupted) and not signals.received
        if (
            own_stop
            and self.current_item is None
            and not (self.active is not None and self.active.active)
        ):
            # pytest stopped itself between tests (e.g. "1 error during collection"):
            # no test ran, nothing is in force, nothing was interrupted.
            return
        session, self.active = self.active, None
        cause = None if excinfo.type is KeyboardInterrupt else f"pytest.exit: {excinfo.value}"
        message, self._lifted_early = self._lifted_early or interrupted(session, cause), None
        reporter = self.config.pluginmanager.get_plugin("terminalreporter") if self.config else None
        for line in message.splitlines():
            if reporter is not None:
                reporter.write_line(line)
            else:
                sys.stderr.write(line + "\n")
        if self.current_item is not None:
            from .interruption import report_interrupted

            # The time not yet reported: JUnit adds this to the phases already logged
            # (the setup's, say), and the test may not last longer than the run.
            logged = self.results.get(self.current_item.nodeid)
            spent = time.time() - self._item_started - (logged.duration_s if logged else 0.0)
            report_interrupted(self.current_item, message, max(0.0, spent))

    def pytest_report_teststatus(
        self, report: pytest.TestReport
    ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
        verdict = getattr(report, "chaos_verdict", None)
        if verdict is None:
            return None
        return "error", "E", (verdict.upper(), {"red": True})

    @pytest.hookimpl(trylast=True, specname="pytest_runtest_logreport")
    def pytest_runtest_logreport_junit(self, report: pytest.TestReport) -> None:
        """After junitxml wrote the test's element: an interrupted test (or one whose
        fault did not take effect) is an <error> with our message, not a failure."""
        verdict = getattr(report, "chaos_verdict", None)
        if verdict is not None and self.config is not None:
            from .interruption import junit_error

            junit_error(self.config, report)

    @pytest.hookimpl(tryfirst=True)  # before junitxml reads the teardown report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.in_use:
            return
        from .report import TestResult

        result = self.results.setdefault(report.nodeid, TestResult(report.nodeid))
        result.duration_s += report.duration
        verdict = getattr(report, "chaos_verdict", None)
        if verdict is not None:
            result.outcome = verdict
            result.message = (result.message + "\n" + report.longreprtext).strip()[-6000:]
        elif report.failed:
            result.outcome = "failed" if report.when == "call" else "error"
            result.message = (result.message + "\n" + report.longreprtext).strip()[-6000:]
        elif report.skipped and result.outcome == "passed":
            # An expected failure (xfail) that failed as expected is not a skip.
            result.outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            result.message = report.longreprtext[-2000:]
        if report.when == "teardown" or verdict == "interrupted":
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

        if config.getoption("--chaos-replay") is not None and not config.stash.get(
            REPLAY_TAKEN, False
        ):
            terminalreporter.write_line(
                "pytest-chaos: --chaos-replay was given, but no test that ran searches "
                "schedules (chaos.explore): nothing was replayed.",
                yellow=True,
            )
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


def start(config: pytest.Config, plugin: ChaosPlugin) -> None:
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
    from .signals import interrupts

    interrupts()
