"""A fault of the user's own, defined outside pytest-chaos, is one registration
(``@fault`` and ``@undoer``) and as crash-safe as a built-in one: after ``kill -9`` of
pytest mid-fault, the journal undoes it, wherever the user defined it (a conftest, a
module their tests import, a package of theirs with an entry point)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pytest_chaos import wait_for_recovery

USER_FAULT = '''
"""A feature flag (a file) raised while the fault is in force."""
import contextlib, pathlib
from pytest_chaos import FaultHandle, fault, undoer

@undoer("flag-file")
def undo_flag(data):
    pathlib.Path(data["path"]).unlink(missing_ok=True)
    return "lowered " + pathlib.Path(data["path"]).name

@fault("flag")
@contextlib.contextmanager
def flag(chaos, path):
    """Raise the flag at ``path`` until the fault is undone."""
    target = pathlib.Path(path)
    with chaos.journaled("flag-file", "flag " + target.name, {"path": str(target)}) as undone:
        target.write_text("on")
        try:
            yield FaultHandle(kind="flag", target=target.name)
        finally:
            target.unlink(missing_ok=True)
            undone()
'''

DWELL = """
import pathlib, time
{imports}

def test_x(chaos):
    chaos.flag(str(pathlib.Path(__file__).parent / "raised"))
    # In force, and marked so in the journal: the moment to be killed at.
    (pathlib.Path(__file__).parent / "in-force").write_text("yes")
    time.sleep(60)  # the dwell kill -9 cuts short
"""


def _kill_9_with_the_flag_raised(pytester, *args):
    flag = pytester.path / "raised"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def raised() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            return (pytester.path / "in-force").exists()

        wait_for_recovery(raised, timeout=30, interval=0.05, transient=(), what="the user's fault")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert flag.exists(), "the fault should outlive a SIGKILLed pytest"
    return flag


def test_a_fault_in_a_conftest_is_undone_by_cleanup_after_kill_9(pytester):
    pytester.makeconftest(USER_FAULT)
    pytester.makepyfile(test_dwell=DWELL.format(imports=""))
    journal = f"--chaos-journal={pytester.path / 'journal'}"
    flag = _kill_9_with_the_flag_raised(pytester, journal, "test_dwell.py")
    result = pytester.runpytest_subprocess(journal, "--chaos-cleanup")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["pytest-chaos: undid flag raised left by run *: lowered raised"])
    assert not flag.exists()


def test_a_fault_in_a_module_the_tests_import_is_undone_after_collection(pytester):
    """The next session replays its journal before any test module is imported: the
    entry waits for collection, which registers its undo."""
    pytester.makepyfile(
        userfaults=USER_FAULT,
        test_dwell=DWELL.format(imports="import userfaults"),
        test_other="import userfaults\n\ndef test_y():\n    pass\n",
    )
    journal = f"--chaos-journal={pytester.path / 'journal'}"
    flag = _kill_9_with_the_flag_raised(pytester, journal, "test_dwell.py")
    # --chaos-cleanup collects nothing: it cannot know the undo, and says where it is.
    result = pytester.runpytest_subprocess(journal, "--chaos-cleanup")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "pytest-chaos: could not undo flag raised left by run *: no undo is registered "
            "for fault kind 'flag-file' (it was defined in module 'userfaults'): define it in "
            "a conftest.py or in a module named by a 'pytest_chaos.faults' entry point*"
        ]
    )
    assert flag.exists()
    result = pytester.runpytest_subprocess(journal, "test_other.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-chaos: undid flag raised left by run *: lowered raised"])
    assert "could not undo" not in result.stdout.str()
    assert not flag.exists()


def test_a_fault_in_a_package_with_an_entry_point_is_undone_by_cleanup(
    pytester, monkeypatch, tmp_path
):
    """The user's package names its module in the 'pytest_chaos.faults' entry-point
    group: the cleanup, in a folder with no conftest and no tests, finds its undo."""
    site = tmp_path / "site"
    info = site / "shopfaults-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "shopfaults.py").write_text(textwrap.dedent(USER_FAULT))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shopfaults\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_chaos.faults]\nshop = shopfaults\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    pytester.makepyfile(test_dwell=DWELL.format(imports=""))
    journal = f"--chaos-journal={pytester.path / 'journal'}"
    flag = _kill_9_with_the_flag_raised(pytester, journal, "test_dwell.py")
    (pytester.path / "test_dwell.py").unlink()
    result = pytester.runpytest_subprocess(journal, "--chaos-cleanup")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["pytest-chaos: undid flag raised left by run *: lowered raised"])
    assert not flag.exists()


def test_a_fault_module_that_does_not_import_is_named(pytester, monkeypatch, tmp_path):
    site = tmp_path / "site"
    info = site / "brokenfaults-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "brokenfaults.py").write_text("import no_such_module_here\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenfaults\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_chaos.faults]\nbroken = brokenfaults\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    pytester.makepyfile("def test_x(chaos):\n    chaos.kill('db')\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "E   *ConfigurationError: the fault module 'brokenfaults' (entry point 'broken' of "
            "group 'pytest_chaos.faults') does not import: ModuleNotFoundError*"
        ]
    )


def test_a_user_fault_is_listed_by_the_dry_run_and_explains_itself(pytester):
    pytester.makeconftest(USER_FAULT)
    pytester.makepyfile(
        """
        import inspect

        def test_planned(chaos):
            chaos.flag("/tmp/never")

        def test_help(chaos):
            assert "flag" in dir(chaos)
            assert str(inspect.signature(chaos.flag)) == "(path)"
            assert chaos.flag.__doc__.startswith("Raise the flag")
        """
    )
    dry = pytester.runpytest_subprocess("--chaos-dry-run", "-k", "planned")
    dry.stdout.fnmatch_lines(["*test_planned", '    line *: chaos.flag("/tmp/never")'])
    result = pytester.runpytest_subprocess("-k", "help")
    result.assert_outcomes(passed=1)


def test_an_unknown_fault_names_the_faults_there_are(pytester):
    pytester.makepyfile("def test_x(chaos):\n    chaos.partitoin('db')\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["E   *UnknownFault: chaos has no fault 'partitoin'; the faults there are: *partition*"]
    )
    result.stdout.no_fnmatch_line("*pytest_chaos/*.py:*")  # no traceback from inside


@pytest.mark.parametrize("name", ["", "_private", "not a name"])
def test_a_fault_needs_a_public_python_name(name):
    from pytest_chaos import ConfigurationError, fault

    with pytest.raises(ConfigurationError, match="a fault's name is a public Python name"):
        fault(name)


WATCHED_FLAG = '''
"""A flag that only bites if something reads it while it is raised."""
import contextlib, dataclasses, pathlib
from pytest_chaos import Effect, FaultHandle, fault

@dataclasses.dataclass
class FlagHandle(FaultHandle):
    path: str = ""

    def measure_effect(self):
        reads = int(pathlib.Path(self.path + ".reads").read_text() or 0)
        return Effect(reads > 0, f"read {reads} time(s) while raised")

@fault("watched_flag")
@contextlib.contextmanager
def watched_flag(chaos, path):
    pathlib.Path(path + ".reads").write_text("0")
    handle = FlagHandle(kind="flag", target="flag", path=path)
    try:
        yield handle
    finally:
        handle.keep_effect()
        handle.lifted_at = handle.undone_at = __import__("time").monotonic()
'''


def test_a_fault_of_ones_own_that_did_not_bite_is_no_effect_and_its_evidence_is_reported(
    pytester,
):
    pytester.makeconftest(WATCHED_FLAG)
    pytester.makepyfile(
        """
        import pathlib, pytest
        from pytest_chaos import FaultDidNotTakeEffect

        def test_read(chaos, tmp_path):
            chaos.watched_flag(str(tmp_path / "f"))
            (tmp_path / "f.reads").write_text("3")

        def test_never_read(chaos, tmp_path):
            chaos.watched_flag(str(tmp_path / "f"))

        def test_never_read_and_failed(chaos, tmp_path):
            chaos.watched_flag(str(tmp_path / "f"))
            assert False, "the system misbehaved"

        @pytest.mark.effect_optional
        def test_undo_only(chaos, tmp_path):
            chaos.watched_flag(str(tmp_path / "f"))

        def test_undone_early_then_checked(chaos, tmp_path):
            handle = chaos.watched_flag(str(tmp_path / "f"))
            chaos.undo(handle)
            (tmp_path / "f.reads").write_text("5")  # after the undo: does not count
        """
    )
    result = pytester.runpytest_subprocess("--junitxml=junit.xml", "-rA")
    result.assert_outcomes(passed=2, errors=3)
    out = result.stdout.str()
    said = "the fault did not take effect: flag flag: read 0 time(s) while raised"
    # Once per test in the errors section (the short summary may repeat it: -ra).
    assert [line for line in out.splitlines() if line.startswith(said)] == [said] * 3
    assert "The test failed as well" in out
    assert "the system misbehaved" in out
    result.stdout.fnmatch_lines(["*test_never_read  *NO EFFECT*"])
    result.stdout.fnmatch_lines(["PASSED *::test_read"])
    xml = (pytester.path / "junit.xml").read_text()
    assert xml.count('<error message="the fault did not take effect') == 3
    assert 'name="chaos_fault_1_took_effect" value="yes"' in xml
    assert 'name="chaos_fault_1_effect" value="read 0 time(s) while raised"' in xml
