"""The plugin driven through pytester: markers, options, and the chaos fixture's
undo on every way a test can end. Faults here are our own context managers that
write to a file, injected through ``chaos.inject`` (the real kill fault's undo is
covered against Docker in tests/integration)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from pytest_chaos.plugin import MARKERS

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

FAULTS = """
import contextlib, pathlib
LOG = pathlib.Path(__file__).parent / "log.txt"

def note(text):
    with LOG.open("a") as f:
        f.write(text + "\\n")

@contextlib.contextmanager
def fault(name, fail_undo=False):
    note("apply " + name)
    try:
        yield name
    finally:
        note("undo " + name)
        if fail_undo:
            raise RuntimeError("undo of " + name + " broke")
"""


@pytest.fixture
def faults(pytester):
    pytester.makepyfile(faults_lib=FAULTS)
    return pytester.path / "log.txt"


def test_markers_are_registered(pytester):
    result = pytester.runpytest_subprocess("--markers")
    for marker, description in MARKERS.items():
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}: {description}"])


def test_markers_pass_strict_markers(pytester):
    marks = [f"@pytest.mark.{m}" for m in MARKERS if "(" not in m]
    source = ["import pytest", *marks, '@pytest.mark.experiment("01")', "def test_x():", "    pass"]
    pytester.makepyfile("\n".join(source))
    result = pytester.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=1)


def test_experiment_marker_without_id_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.experiment
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*write the experiment marker as @pytest.mark.experiment('01')*"])


def test_help_works_and_lists_the_options(pytester):
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--chaos-project=NAME*", "*--chaos-timeout=DURATION*"])


def test_bad_timeout_option_is_a_usage_error_naming_its_source(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--chaos-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--chaos-timeout: timeout 'soon' is not a duration*"])


def test_bad_timeout_in_ini_names_the_ini(pytester):
    pytester.makeini("[pytest]\nchaos_timeout = 0s\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option chaos_timeout: timeout must be positive*"])


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("pass", {"passed": 1}),
        ("assert False, 'experiment failed'", {"failed": 1}),
        ("raise ConnectionError('boom')", {"failed": 1}),
    ],
    ids=["pass", "failure", "exception"],
)
def test_faults_are_undone_last_in_first_out_however_the_test_ends(pytester, faults, body, outcome):
    pytester.makepyfile(
        f"""
        from faults_lib import fault
        def test_x(chaos):
            chaos.inject(fault("a"))
            chaos.inject(fault("b"))
            {body}
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(**outcome)
    assert faults.read_text().split("\n") == ["apply a", "apply b", "undo b", "undo a", ""]


def test_every_undo_runs_even_when_one_fails(pytester, faults):
    pytester.makepyfile(
        """
        from faults_lib import fault
        def test_x(chaos):
            chaos.inject(fault("a"))
            chaos.inject(fault("b", fail_undo=True))
            chaos.inject(fault("c"))
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*UndoFailed: 1 undo(s) failed (all were attempted): 'b': undo of b broke*"]
    )
    applied, undone = ["apply a", "apply b", "apply c"], ["undo c", "undo b", "undo a"]
    assert faults.read_text().splitlines() == applied + undone


def test_an_early_undo_leaves_the_others_in_force(pytester, faults):
    pytester.makepyfile(
        """
        from faults_lib import fault, note
        def test_x(chaos):
            a = chaos.inject(fault("a"))
            chaos.inject(fault("b"))
            chaos.undo(a)
            note("body ends")
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert faults.read_text().split("\n")[2:5] == ["undo a", "body ends", "undo b"]


def test_figures_become_junit_properties_and_a_summary(pytester):
    pytester.makepyfile(
        """
        def test_x(chaos):
            chaos.record("recovery_time_s", 1.25)
            chaos.record("orders_lost", 0)
        """
    )
    result = pytester.runpytest_subprocess("--junitxml=out.xml")
    result.stdout.fnmatch_lines(
        ["*chaos figures*", "*recovery_time_s = 1.25*", "*orders_lost = 0*"]
    )
    xml = (pytester.path / "out.xml").read_text()
    assert '<property name="recovery_time_s" value="1.25"' in xml
    assert '<property name="orders_lost" value="0"' in xml


def test_the_run_ends_with_a_table_of_experiments_and_their_verdicts(pytester, faults):
    pytester.makepyfile(
        """
        import pytest
        from faults_lib import fault

        @pytest.mark.experiment("07")
        def test_cache_down(chaos):
            chaos.inject(fault("redis"))
            chaos.record("recovery_time_s", 2.5)
            chaos.record("orders_acknowledged", 120)
            chaos.record("orders_lost", 0)
            chaos.record("bpf_api_connect_attempts", 14)
            chaos.record("bpf_api_retransmits", 3, key=True)
            chaos.record("bpf_api_source", "proc")

        @pytest.mark.experiment("09")
        def test_slow_network(chaos):
            chaos.inject(fault("postgres"))
            chaos.record("latency_method", "nfqueue")
            chaos.record("orders_lost", 2)
            assert False, "orders were lost"

        @pytest.mark.experiment("11")
        @pytest.mark.xfail(strict=True, raises=AssertionError, reason="a known weakness")
        def test_known_weakness(chaos):
            chaos.inject(fault("cache"))
            chaos.record("orders_lost", 3)
            assert False, "the weakness shows"

        def test_plain():
            pass
        """
    )
    pytester.makeini(
        "[pytest]\nchaos_summary_columns =\n    orders ack/lost = orders_acknowledged/orders_lost\n"
    )
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(
        [
            "*chaos experiments*",
            "experiment*test*fault*target*verdict*recovery*orders ack/lost*key figure*fallback",
            "07 *test_cache_down *str *- *PASSED *2.50 s *120/0 *bpf_api_retransmits=3 "
            "*no BPF: /proc counters",
            "09 *test_slow_network *str *- *FAILED *- *?/2 *- *no netem: NFQUEUE",
            "11 *test_known_weakness *str *- *XFAILED *- *?/3*",
        ]
    )
    assert "test_plain" not in result.stdout.str().split("chaos experiments")[1]


def test_the_table_has_only_generic_columns_unless_the_project_adds_its_own(pytester, faults):
    pytester.makepyfile(
        """
        from faults_lib import fault

        def test_x(chaos):
            chaos.inject(fault("db"))
            chaos.record("orders_lost", 0)
        """
    )
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["experiment  test * recovery  key figure  fallback"])
    assert "orders" not in result.stdout.str().split("chaos experiments")[1].splitlines()[1]


def test_a_malformed_summary_column_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nchaos_summary_columns =\n    orders with no figures\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*chaos_summary_columns line 'orders with no figures' is not 'TITLE = FIGURE*"]
    )


def test_the_report_draws_each_tests_timeline_from_what_really_happened(pytester, faults):
    """A real load generator against an HTTP server on loopback that fails while a
    fault is in force; the report's JSON holds those requests, the fault's window and
    the recovery; the page draws them and shows the failure's message."""
    pytester.makepyfile(
        test_timeline="""
        import threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import pytest
        from faults_lib import fault
        from pytest_chaos import Flow, LoadGenerator, Request, wait_for_recovery

        BROKEN = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(503 if BROKEN.is_set() else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        @pytest.fixture
        def server():
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            yield f"http://127.0.0.1:{httpd.server_port}/"
            httpd.shutdown()

        @pytest.mark.experiment("99")
        @pytest.mark.parametrize("verdict", ["pass", "fail"])
        def test_outage(chaos, server, verdict):
            flow = Flow("reads", 50, lambda n: Request("GET", server))
            with LoadGenerator([flow], request_timeout=2) as load:
                load.wait_for_records("reads", 10)
                outage = chaos.inject(fault("api"))
                BROKEN.set()
                time.sleep(0.3)  # the fault's dwell
                BROKEN.clear()
                healed = time.monotonic()
                wait_for_recovery(lambda: load.records("reads", since=healed + 0.05),
                                  since=healed, timeout=5, what="reads again")
            chaos.record("recovery_time_s", 0.1)
            assert verdict == "pass", "the experiment found a weakness"
        """
    )
    result = pytester.runpytest_subprocess("--chaos-report=out")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*chaos report: *out*index.html*"])
    data = json.loads((pytester.path / "out" / "report.json").read_text())
    tests = {t["nodeid"].rsplit("[", 1)[1].rstrip("]"): t for t in data["tests"]}
    assert {t["outcome"] for t in tests.values()} == {"passed", "failed"}
    timeline = tests["pass"]["timeline"]
    (window,) = timeline["faults"]
    assert window["label"] == "'api'"
    assert window["end"] > window["start"]
    requests = timeline["requests"]
    assert len(requests) >= 10
    failed = [r for r in requests if not r["ok"]]
    assert failed
    assert all(r["status"] == 503 for r in failed)
    assert all(window["start"] - 0.1 <= r["t"] <= window["end"] + 0.1 for r in failed)
    assert [r["what"] for r in timeline["recoveries"]] == ["reads again"]
    assert tests["pass"]["figures"]["recovery_time_s"] == "0.1"
    page = (pytester.path / "out" / "index.html").read_text()
    assert page.count("<svg") == 2
    assert "the experiment found a weakness" in page  # the failing test's message


def test_a_live_line_says_what_is_in_force_while_a_fault_dwells(pytester, faults):
    pytester.makepyfile(
        test_dwell="""
        import time
        from faults_lib import fault

        def test_dwell(chaos):
            chaos.inject(fault("partition"))
            time.sleep(1.3)  # the fault's dwell, long enough for two status lines

        def test_no_fault(chaos):
            time.sleep(0.8)  # a window with nothing in force: the line must stay silent
        """
    )
    result = pytester.runpytest_subprocess("--chaos-live-interval=0.5", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["chaos: 'partition' for 0.* s", "chaos: 'partition' for 1.* s"])
    after = result.stdout.str().split("test_no_fault")[1]
    assert "chaos:" not in after.split("PASSED")[0]  # nothing in force: silent
    off = pytester.runpytest_subprocess("--chaos-live-interval=0")
    assert "chaos: 'partition'" not in off.stdout.str()
    bad = pytester.runpytest_subprocess("--chaos-live-interval=-1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["*--chaos-live-interval must be 0 (off) or a positive number of seconds, not -1."]
    )


def test_a_fault_shorter_than_the_live_interval_still_gets_a_line(pytester, faults):
    pytester.makepyfile(
        test_short="""
        import time
        from faults_lib import fault

        def test_short(chaos):
            handle = chaos.inject(fault("flag"))
            time.sleep(0.2)  # in force for less than the interval
            chaos.undo(handle)
            time.sleep(1.2)  # the rest of the test: two ticks with nothing in force
        """
    )
    result = pytester.runpytest_subprocess("--chaos-live-interval=0.5", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["chaos: 'flag' was in force for 0.* s, lifted"])
    assert result.stdout.str().count("was in force") == 1


def test_the_header_names_the_backend_and_the_kernel_features_found(pytester):
    pytester.makepyfile("def test_x(chaos): pass")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(
        [
            "pytest-chaos: backend *; root *",
            "pytest-chaos: kernel *: cgroup *; BPF *; netem *",
        ]
    )


PLAIN = """
import signal, sys

def test_plain():
    loaded = {"docker", "bcc", "pyroute2", "httpx", "psycopg"} & set(sys.modules)
    ours = sorted(m for m in sys.modules if m.startswith("pytest_chaos."))
    assert not loaded, loaded
    assert ours == [
        "pytest_chaos.errors", "pytest_chaos.plugin", "pytest_chaos.session",
        "pytest_chaos.settings", "pytest_chaos.units",
    ], ours
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
"""


def test_a_project_that_runs_no_chaos_test_pays_nothing(pytester):
    """No Docker ping, no bcc, no netem probe, no header, no signal handler, no fault
    library: the plugin is installed, not used."""
    pytester.makepyfile(PLAIN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "pytest-chaos" not in result.stdout.str()


def test_a_chaos_option_alone_turns_the_plugin_on(pytester, tmp_path):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(f"--chaos-journal={tmp_path}")
    result.stdout.fnmatch_lines(["pytest-chaos: backend *"])


def test_a_journal_with_entries_is_replayed_even_when_no_chaos_test_runs(pytester, tmp_path):
    journal = tmp_path / "journal"
    pytester.makeini(f"[pytest]\nchaos_journal = {journal}\n")
    pytester.makeconftest(
        """
        import pathlib
        from pytest_chaos.journal import undoer

        @undoer("note-fault")
        def _undo(data):
            pathlib.Path(data["file"]).write_text("undone")
            return "removed the note"
        """
    )
    note = tmp_path / "note"
    code = (
        "import json, pathlib, sys\n"
        "from pytest_chaos.journal import Journal, undoer\n"
        "undoer('note-fault')(lambda data: '')\n"
        f"Journal(pathlib.Path({str(journal)!r}), 'dead0001').write("
        f"'note-fault', 'a note', {{'file': {str(note)!r}}})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # a pytest that since died
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-chaos: undid a note left by run dead0001*"])
    assert note.read_text() == "undone"
    assert "pytest-chaos: backend" not in result.stdout.str()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "chaos.kill('postgres', 'SIGFOO')",
            "'SIGFOO' is not a signal name; use one such as 'SIGKILL'*",
        ),
        (
            "chaos.kill('postgres', recovery_timeout='forever')",
            "recovery_timeout 'forever' is not a duration*",
        ),
        ("chaos.kill('postgres', 'SIGCONT')", "*SIGCONT is not a fault*"),
        ("chaos.record('x', [1])", "figure 'x' must be a number or a string*"),
    ],
)
def test_bad_arguments_give_one_clear_error_and_apply_nothing(pytester, call, message):
    pytester.makepyfile(
        f"""
        def test_x(chaos):
            {call}
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)  # an error of the test's arguments, not of the system
    result.stdout.fnmatch_lines([f"E   *pytest_chaos.errors.*: {message}"])
    result.stdout.no_fnmatch_line("*pytest_chaos/*.py:*")  # no traceback from inside
    result.stdout.no_fnmatch_line("*chaos_fault_1*")  # nothing was applied


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_faults_are_undone_when_pytest_is_interrupted(pytester, faults, sig, inner_pytest):
    pytester.makepyfile(
        """
        import time
        from faults_lib import fault, note
        def test_x(chaos):
            chaos.inject(fault("a"))
            note("in force")
            time.sleep(60)  # the dwell the interruption cuts short
        """
    )
    proc = _run_until_applied(inner_pytest, pytester, faults)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert faults.read_text().split("\n") == ["apply a", "in force", "undo a", ""]
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


JOURNALED = """
import contextlib, pathlib
from pytest_chaos.journal import undoer

LOG = pathlib.Path(__file__).parent / "log.txt"

def note(text):
    with LOG.open("a") as f:
        f.write(text + "\\n")

@undoer("test-fault")
def undo_from_journal(data):
    note("journal undo " + data["name"])
    return "undid " + data["name"]

@contextlib.contextmanager
def journaled_fault(journal, name):
    entry = journal.write("test-fault", "test fault " + name, {"name": name})
    note("apply " + name)
    try:
        yield name
    finally:
        note("undo " + name)
        journal.clear(entry)
"""


def _run_until_applied(inner_pytest, pytester, log, *args):
    proc = inner_pytest.start(pytester.path, *args)
    inner_pytest.wait(
        proc, lambda: "in force" in (log.read_text() if log.exists() else ""),
        what="the inner fault", timeout=30,
    )  # fmt: skip
    return proc


@pytest.mark.parametrize("recovery", ["next-session", "cleanup"])
def test_after_kill_9_the_journal_undoes_the_fault(pytester, recovery, inner_pytest):
    """pytest is SIGKILLed while a fault is in force: no finalizer runs. The next
    session (or pytest --chaos-cleanup) undoes it from the journal and says so."""
    pytester.makeconftest(JOURNALED)
    pytester.makepyfile(
        test_dwell="""
        import time
        from conftest import journaled_fault, note
        def test_x(chaos):
            chaos.inject(journaled_fault(chaos.journal, "a"))
            note("in force")
            time.sleep(60)  # the dwell kill -9 cuts short
        """,
        test_other="def test_y(): pass",
    )
    journal = pytester.path / "journal"
    log = pytester.path / "log.txt"
    proc = _run_until_applied(
        inner_pytest, pytester, log, f"--chaos-journal={journal}", "test_dwell.py"
    )
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()
    assert log.read_text().split("\n") == ["apply a", "in force", ""]  # nothing undone
    assert len(list(journal.glob("*.json"))) == 1

    if recovery == "cleanup":
        result = pytester.runpytest_subprocess(f"--chaos-journal={journal}", "--chaos-cleanup")
        assert result.ret == 0
    else:
        result = pytester.runpytest_subprocess(f"--chaos-journal={journal}", "test_other.py")
        result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["pytest-chaos: undid test fault a left by run * (pytest pid *, gone): undid a"]
    )
    assert log.read_text().split("\n")[-2] == "journal undo a"
    assert list(journal.glob("*.json")) == []


def test_a_dry_run_lists_each_tests_faults_and_runs_nothing(pytester, faults):
    pytester.makepyfile(
        test_planned="""
        import pytest
        from faults_lib import fault, note

        @pytest.mark.network
        def test_partition(chaos):
            note("the test ran")
            chaos.partition("trading-api", ["postgres"],
                            mode="drop")
            chaos.inject(fault("a"))

        @pytest.mark.resources
        def test_memory(chaos, chaos_project):
            chaos.memory_cap("trading-api", "256m")

        def test_no_faults():
            note("the test ran")
        """
    )
    result = pytester.runpytest_subprocess("--chaos-dry-run", "-m", "network or not resources")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "pytest-chaos dry run: 2 test(s) selected; nothing runs, nothing changes",
            "test_planned.py::test_partition",
            '    line 7: chaos.partition("trading-api", ["postgres"], mode="drop")'
            "  [needs: root, this-kernel]",
            '    line 9: chaos.inject(fault("a"))',
            "test_planned.py::test_no_faults",
            "    no fault calls on the chaos fixture in this test's body",
        ]
    )
    assert "test_memory" not in result.stdout.str()  # deselected by the marker
    assert not faults.exists()  # no test body ran, no fault was applied


def test_a_dry_run_reports_but_does_not_undo_what_the_journal_holds(pytester, inner_pytest):
    pytester.makeconftest(JOURNALED)
    pytester.makepyfile(
        test_dwell="""
        import time
        from conftest import journaled_fault, note
        def test_x(chaos):
            chaos.inject(journaled_fault(chaos.journal, "a"))
            note("in force")
            time.sleep(60)  # the dwell kill -9 cuts short
        """
    )
    journal = pytester.path / "journal"
    log = pytester.path / "log.txt"
    proc = _run_until_applied(
        inner_pytest, pytester, log, f"--chaos-journal={journal}", "test_dwell.py"
    )
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()

    result = pytester.runpytest_subprocess(f"--chaos-journal={journal}", "--chaos-dry-run")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["pytest-chaos dry run: the journal holds test fault a of a run that died; *"]
    )
    assert log.read_text().split("\n") == ["apply a", "in force", ""]  # still in force
    assert len(list(journal.glob("*.json"))) == 1


def test_cleanup_with_an_empty_journal_says_so(pytester, tmp_path):
    result = pytester.runpytest_subprocess(f"--chaos-journal={tmp_path}", "--chaos-cleanup")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"pytest-chaos: nothing to undo in {tmp_path}"])


def test_a_forked_child_killed_with_sigterm_does_not_rerun_pytest_teardown(pytester):
    """Libraries fork (pyroute2 did). The child inherits the SIGTERM handler; it must
    exit like a child, not unwind a copy of pytest and run the finalizers again."""
    log = pytester.path / "teardowns.txt"
    pytester.makepyfile(
        f"""
        import os, signal, time, pytest

        @pytest.fixture(scope="session")
        def stack():
            yield
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")

        def test_x(stack, chaos):
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(ready_w, b"x")  # running Python code: its handlers are live
                time.sleep(30)  # the child waits to be signalled
                os._exit(0)
            os.read(ready_r, 1)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert len(log.read_text().splitlines()) == 1


def test_works_beside_conftest_files_in_sibling_folders(pytester):
    """pluggy keeps plugins in sets when a conftest does not apply to a test's folder:
    the session plugin must be hashable (it was not, and crashed the whole run)."""
    pytester.mkpydir("a").joinpath("conftest.py").write_text("")
    pytester.path.joinpath("a", "test_a.py").write_text("def test_a(chaos):\n    pass\n")
    pytester.mkpydir("b").joinpath("conftest.py").write_text("")
    pytester.path.joinpath("b", "test_b.py").write_text("def test_b():\n    pass\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=2)
