"""chaos.explore driven through pytester, on a "system" of the test's own: two faults
registered with @fault (no Docker: tests/schedule runs the search on the real
exchange) and a bug that only their combination in one order exposes. What is
checked here is the search itself: it finds, confirms, shrinks, re-runs, reports and
replays; an unreproducible failure is not a pass; a search that ran nothing is not
one either."""

from __future__ import annotations

import json
import signal
import time
import xml.etree.ElementTree as ET

import pytest

SYSTEM = """
import contextlib, os
import pytest
from pytest_chaos import FaultHandle, fault, schedules

IN_FORCE = set()
BROKEN = []

@fault("freeze")
@contextlib.contextmanager
def freeze(chaos, service):
    IN_FORCE.add(("freeze", service))
    try:
        yield FaultHandle(kind="freeze", target=service)
    finally:
        IN_FORCE.discard(("freeze", service))

@fault("wipe")
@contextlib.contextmanager
def wipe(chaos, service):
    # The bug: wiping the cache while the database is frozen loses data.
    if os.environ.get("SYSTEM_BUG") and service == "cache" and ("freeze", "db") in IN_FORCE:
        BROKEN.append("wiped the cache while the database was frozen")
    yield FaultHandle(kind="wipe", target=service)

STRATEGY = schedules(["db", "cache"], kinds=["freeze", "wipe"], max_steps=3,
                     length="0.1s", resolution="0.02s")

def example(chaos):
    def run(schedule):
        BROKEN.clear()
        chaos.run_schedule(schedule)
        assert not BROKEN, "data lost: " + BROKEN[0]
    return run
"""

SEARCH = """
import pytest
from system import STRATEGY, example
{marker}
def test_search(chaos):
    chaos.explore(STRATEGY, example(chaos), max_examples=100, seed=7, database=None{extra})
"""

MINIMAL = "freeze db at 0s for 0.02s; wipe cache at 0s for 0.02s"


@pytest.fixture
def system(pytester, monkeypatch):
    pytester.makepyfile(system=SYSTEM)
    monkeypatch.setenv("SYSTEM_BUG", "1")
    return pytester


def _search(pytester, *args, marker="", extra=""):
    pytester.makepyfile(test_search=SEARCH.format(marker=marker, extra=extra))
    return pytester.runpytest_subprocess("--junitxml=out.xml", *args)


def _failing(pytester, source, *, error=False):
    """Run ``source`` as the test module; its one test must fail (``error``: end in an
    error of the test's own making, a bad argument, which judges no system)."""
    pytester.makepyfile(test_search=source)
    result = pytester.runpytest_subprocess("--junitxml=out.xml")
    result.assert_outcomes(**({"errors": 1} if error else {"failed": 1}))
    return result


def _properties(pytester):
    tree = ET.parse(pytester.path / "out.xml")  # noqa: S314 - pytest wrote it
    return {p.get("name"): p.get("value") for p in tree.iter("property")}


def test_the_search_finds_the_combination_shrinks_it_and_says_how_to_replay_it(system):
    result = _search(system)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "shrank it to 2 step(s) (failed 3 of 3 re-runs)" in text
    result.stdout.fnmatch_lines(
        [
            "*1. freeze db at 0s for 0.02s",
            "*2. wipe cache at 0s for 0.02s",
            "*what failed: AssertionError: data lost: wiped the cache while the database*",
            "*seed 7.",
            f"*--chaos-replay='{MINIMAL}'",
            f"*@pytest.mark.schedule(replay={MINIMAL!r})",
            "*def test_search_replay(chaos):",
        ]
    )
    props = _properties(system)
    assert props["schedule_replay"] == MINIMAL
    assert props["schedule_step_1"] == "freeze db at 0s for 0.02s"
    assert props["schedule_step_2"] == "wipe cache at 0s for 0.02s"
    assert props["schedule_minimal_steps"] == "2"
    assert props["schedule_reproduced"] == "3/3"
    assert props["schedule_seed"] == "7"
    assert int(props["schedule_found_after_examples"]) >= 1
    assert int(props["schedule_shrink_runs"]) >= 1
    # The last re-run's faults are the test's: numbered from 1, on its timeline.
    assert props["chaos_fault_1"] == "step 1: freeze db at 0s for 0.02s"
    assert props["chaos_fault_2"] == "step 2: wipe cache at 0s for 0.02s"
    assert "chaos_fault_3" not in props


def test_the_pasted_test_and_the_option_replay_exactly_that_schedule(system):
    result = _search(system, marker=f"@pytest.mark.schedule(replay={MINIMAL!r})")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the replayed schedule failed 3 of 3 runs:*"])
    assert _properties(system)["schedule_reproduced"] == "3/3"
    # The same steps in the other order do not break it: the replay runs exactly them.
    reversed_order = "wipe cache at 0s for 0.02s; freeze db at 0.02s for 0.02s"
    result = _search(system, f"--chaos-replay={reversed_order}")
    result.assert_outcomes(passed=1)
    assert _properties(system)["schedule_replay"] == reversed_order


def test_the_pasted_test_of_a_marked_test_carries_one_schedule_marker(system):
    result = _search(system, marker="@pytest.mark.schedule(seed=7)")
    result.assert_outcomes(failed=1)
    # The lines above the pasted function (the report may be printed twice: -ra).
    lines = result.stdout.lines
    at = next(i for i, line in enumerate(lines) if "def test_search_replay(chaos):" in line)
    above = "\n".join(lines[at - 4 : at])
    assert above.count("@pytest.mark.schedule(") == 1, above
    result.stdout.fnmatch_lines(
        [f"*@pytest.mark.schedule(replay={MINIMAL!r})", "*def test_search_replay(chaos):"]
    )


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        ("pause db for 1s", "*--chaos-replay: cannot read the schedule step 'pause db for 1s'*"),
        ("  ", "*--chaos-replay is empty*"),
    ],
    ids=["unreadable", "empty"],
)
def test_a_replay_that_cannot_be_read_is_a_usage_error(system, replay, message):
    result = _search(system, f"--chaos-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_replay_that_no_search_took_says_so(pytester):
    pytester.makepyfile(test_plain="def test_plain(chaos):\n    pass\n")
    result = pytester.runpytest_subprocess(f"--chaos-replay={MINIMAL}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*--chaos-replay was given, but no test*nothing was replayed*"])


def test_a_failure_that_does_not_reproduce_is_reported_not_passed_nor_shrunk(system):
    # Every schedule fails on its first run only: never confirmed, never a pass.
    result = _failing(
        system,
        """
from system import STRATEGY
RUNS = {}
def test_search(chaos):
    def example(schedule):
        RUNS[schedule.text] = RUNS.get(schedule.text, 0) + 1
        assert not (schedule.steps and RUNS[schedule.text] == 1), "a once-only failure"
    chaos.explore(STRATEGY, example, max_examples=5, seed=3, database=None)
""",
    )
    result.stdout.fnmatch_lines(
        [
            "*no failure was confirmed, but * schedule(s) failed and then held up in a re-run*",
            "*(failed 1 of 2 runs)*",
            "*what failed first: AssertionError: a once-only failure*",
        ]
    )
    assert "shrank" not in result.stdout.str()
    props = _properties(system)
    assert int(props["schedule_unconfirmed_failures"]) >= 1
    # An example that failed once did not hold, confirmed or not.
    held = int(props["schedule_examples"]) - int(props["schedule_unconfirmed_failures"])
    assert int(props["schedule_examples_held"]) == held


VIOLATION_ONCE = """
from pytest_chaos import set_full
from system import STRATEGY
RUNS = {}
def test_search(chaos):
    def example(schedule):
        n = RUNS[schedule.text] = RUNS.get(schedule.text, 0) + 1
        chaos.record("run_of_schedule", n)
        writer, reader = chaos.history.client(), chaos.history.client()
        writer.invoke("add", "x")
        writer.ok(None)
        reader.invoke("read")
        # Lost once: the first run of the first two-step schedule drawn, never again.
        lose = len(schedule.steps) >= 2 and n == 1 and not LOST
        if lose:
            LOST.append(schedule.text)
        reader.ok([] if lose else ["x"])
        chaos.check(set_full(chaos.history))
    chaos.explore(STRATEGY, example, max_examples=30, seed=5, database=None)
LOST = []
"""


def test_a_safety_violation_seen_once_fails_the_search_with_its_history_and_replay(system):
    result = _failing(system, VIOLATION_ONCE)
    text = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*the search saw a safety violation (1 run(s) in all)*First seen under:*",
            "*what failed: *set-full*lost*",
            "*that schedule failed 1 of its 2 runs*",
            "*--chaos-replay='*'",
        ]
    )
    assert "no failure was confirmed" not in text
    props = _properties(system)
    # The figures are the violating run's (its first), not a later run's that held.
    assert props["run_of_schedule"] == "1"
    assert props["set_full_valid"] == "false"
    assert int(props["schedule_unconfirmed_failures"]) == 1


def test_a_safety_violation_keeps_its_history_as_evidence(system):
    system.makepyfile(test_search=VIOLATION_ONCE)
    result = system.runpytest_subprocess("--chaos-report=out")
    result.assert_outcomes(failed=1)
    kept = list((system.path / "out" / "evidence").rglob("history-kept-*.jsonl"))
    assert len(kept) == 1, list((system.path / "out").rglob("*"))
    events = [json.loads(line) for line in kept[0].read_text().splitlines()]
    reads = [e for e in events if e["f"] == "read" and e["type"] == "ok"]
    assert reads
    assert reads[-1]["value"] == []  # the read that lost "x": the proof


def test_a_confirmed_failure_lists_the_safety_violations_seen_under_other_schedules(system):
    result = _failing(
        system,
        """
from pytest_chaos import set_full
from system import STRATEGY
RUNS = {}
def test_search(chaos):
    def example(schedule):
        n = RUNS[schedule.text] = RUNS.get(schedule.text, 0) + 1
        assert len(schedule.steps) < 2, "two steps always break it"
        writer, reader = chaos.history.client(), chaos.history.client()
        writer.invoke("add", "x")
        writer.ok(None)
        reader.invoke("read")
        reader.ok([] if (len(schedule.steps) == 1 and n == 1) else ["x"])  # lost once
        chaos.check(set_full(chaos.history))
    chaos.explore(STRATEGY, example, max_examples=60, seed=11, database=None)
""",
    )
    result.stdout.fnmatch_lines(
        [
            "*the schedule search found a failure and shrank it to 2 step(s)*",
            "*safety violations were also seen under * other schedule(s): *",
        ]
    )


def test_a_replay_reports_the_figures_of_a_run_that_failed(system):
    result = _failing(
        system,
        """
from system import STRATEGY
RUNS = []
def test_search(chaos):
    def example(schedule):
        RUNS.append(schedule.text)
        chaos.record("run_number", len(RUNS))
        assert len(RUNS) != 1, "failed on the first run only"
    chaos.explore(STRATEGY, example, reproduce=3,
                  replay="freeze db at 0s for 0.02s; wipe cache at 0s for 0.02s")
""",
    )
    result.stdout.fnmatch_lines(["*the replayed schedule failed 1 of 3 runs*"])
    assert _properties(system)["run_number"] == "1"


@pytest.mark.parametrize(
    ("fails_on", "confirmed"),
    [("n in (1, 2, 3, 5, 6)", True), ("n in (1, 2, 4, 5, 6)", False)],
    ids=["in-a-row", "not-in-a-row"],
)
def test_a_failure_counts_when_it_fails_three_runs_in_a_row(system, fails_on, confirmed):
    # Two-step schedules fail on the runs named (1 is the first run of a schedule).
    result = _failing(
        system,
        f"""
from system import STRATEGY
RUNS = {{}}
def test_search(chaos):
    def example(schedule):
        n = RUNS[schedule.text] = RUNS.get(schedule.text, 0) + 1
        assert not (len(schedule.steps) >= 2 and {fails_on}), "a failure on some runs"
    chaos.explore(STRATEGY, example, max_examples=100, seed=5, database=None)
""",
    )
    if confirmed:
        # Runs 1 to 3 confirmed it (confirm=3); the re-runs are its runs 4, 5 and 6.
        result.stdout.fnmatch_lines(["*shrank it to 2 step(s) (failed 2 of 3 re-runs)*"])
    else:
        result.stdout.fnmatch_lines(
            ["*no failure was confirmed*", "*(failed 2 of 3 runs)", "*and * more"]
        )


def test_a_system_that_holds_up_passes_with_the_search_figures(pytester):
    pytester.makepyfile(system=SYSTEM)  # SYSTEM_BUG unset: the bug is off
    result = _search(pytester)
    result.assert_outcomes(passed=1)
    props = _properties(pytester)
    assert props["schedule_examples"] == props["schedule_examples_held"]
    assert int(props["schedule_examples"]) >= 10
    assert props["schedule_examples_not_run"] == "0"
    assert props["schedule_unconfirmed_failures"] == "0"
    assert "schedule_replay" not in props
    assert "chaos_fault_1" not in props  # the examples' own figures are not the test's


def test_a_search_that_ran_no_example_is_not_a_pass(system):
    result = _search(system, extra=", budget=1e-9")
    result.assert_outcomes(errors=1)  # the "no effect" verdict
    result.stdout.fnmatch_lines(["*the search ran no example within its budget*"])
    assert "no effect" in result.stdout.str().lower()


def test_an_error_of_the_example_ends_the_search_as_an_error(system):
    result = _failing(
        system,
        """
from system import STRATEGY
def test_search(chaos):
    def example(schedule):
        raise RuntimeError("the load generator could not start")
    chaos.explore(STRATEGY, example, max_examples=5, seed=1, database=None)
""",
    )
    result.stdout.fnmatch_lines(["*RuntimeError: the load generator could not start*"])
    assert "no failure was confirmed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("chaos.explore([1], lambda s: None)", "explore needs a Hypothesis strategy of schedules"),
        ("chaos.explore(STRATEGY, None)", "explore needs the example"),
        ("chaos.explore(STRATEGY, lambda s: None, confirm=0)", "confirm must be a whole number"),
        ("chaos.explore(STRATEGY, lambda s: None, budget='soon')", "budget"),
        (
            "chaos.explore(STRATEGY, lambda s: None, examples=5)",
            "explore takes no option examples; its options are: max_examples, confirm",
        ),
        (
            "chaos.explore(STRATEGY, lambda s: None, replay='freeze db for ever')",
            "cannot read the schedule step",
        ),
    ],
)
def test_bad_input_is_one_clear_sentence_without_a_traceback_from_the_plugin(system, call, message):
    result = _failing(
        system,
        f"""
from system import STRATEGY
def test_search(chaos):
    {call}
""",
        error=True,
    )
    result.stdout.fnmatch_lines([f"*{message}*"])
    assert "pytest_chaos/search.py" not in result.stdout.str()


def test_the_schedule_marker_takes_only_replay_and_seed(system):
    result = _search(system, marker="@pytest.mark.schedule(budget=3)")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.schedule takes replay= and seed=, not budget=*"])


def test_a_schedule_the_system_does_not_recover_from_fails_that_run(system):
    result = _failing(
        system,
        """
from system import STRATEGY
STUCK = []
def test_search(chaos):
    def example(schedule):
        STUCK.clear()  # the reset of each run
        chaos.run_schedule(schedule)
        if any(s.kind == "wipe" and s.service == "db" for s in schedule.steps):
            STUCK.append("the database lost its data directory")
    chaos.explore(STRATEGY, example, steady=lambda: not STUCK, steady_timeout="0.3s",
                  max_examples=100, seed=2, database=None)
""",
    )
    result.stdout.fnmatch_lines(
        [
            "*shrank it to 1 step(s) (failed 3 of 3 re-runs)*",
            "*1. wipe db at 0s for 0.02s",
            "*what failed: RecoveryTimeout: the steady state after the schedule*",
        ]
    )


SEARCH_TO_INTERRUPT = """
import contextlib, pathlib, time
from pytest_chaos import FaultHandle, fault, schedules

FLAG = pathlib.Path(__file__).parent / "flag"

@fault("flag")
@contextlib.contextmanager
def flag(chaos, service):
    FLAG.write_text(service)
    try:
        yield FaultHandle(kind="flag", target=service)
    finally:
        FLAG.unlink()
        (FLAG.parent / "undone-at").write_text(repr(time.time()))

STRATEGY = schedules(["a"], kinds=["flag"], max_steps=1, length="30s", resolution="30s")

def test_search(chaos):
    chaos.explore(STRATEGY, chaos.run_schedule, max_examples=5, seed=1, database=None)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_search_lifts_the_step_in_force_and_is_reported_interrupted(
    pytester, inner_pytest, sig
):
    pytester.makepyfile(test_search=SEARCH_TO_INTERRUPT)
    proc = inner_pytest.start(
        pytester.path, "--junitxml=junit.xml", f"--chaos-journal={pytester.path / 'journal'}"
    )
    inner_pytest.wait(
        proc, (pytester.path / "flag").exists, what="a step in force", timeout=60, interval=0.02
    )
    sent = time.time()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert not (pytester.path / "flag").exists(), out
    assert float((pytester.path / "undone-at").read_text()) - sent < 1.0, out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert f"pytest-chaos: interrupted by {signal.Signals(sig).name}" in out
    assert "lifted 1 fault(s)" in out
    assert "step 1: flag a at 0s for 30s" in out
    assert "PASSED" not in out


def test_a_dry_run_lists_the_search_and_runs_nothing(system):
    system.makepyfile(test_search=SEARCH.format(marker="", extra=""))
    result = system.runpytest_subprocess("--chaos-dry-run")
    result.stdout.fnmatch_lines(
        [
            "test_search.py::test_search",
            "    line 5: chaos.explore(STRATEGY, example(chaos), max_examples=100, seed=7, "
            "database=None)",
        ]
    )
    assert "shrank" not in result.stdout.str()
