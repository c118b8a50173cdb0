"""Shared by the integration tests: an inner pytest, attached to the running stack,
that applies a fault and is then killed with SIGKILL (no finalizer runs) at a chosen
moment, and a full snapshot of the stack taken before, to compare after cleanup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from stack_snapshot import differences, snapshot

from pytest_chaos import wait_for_recovery

#: Where the inner pytest stops, to be killed there, besides "in-force" (its test
#: body runs with the fault applied): code for its conftest.py that patches the
#: plugin to write the marker and sleep at that point.
MOMENTS = {
    # The instant the fault's journal entry is durable, before anything is applied.
    "entry": """
import pytest_chaos.journal as journal
_write = journal._write_durably
def _pause(path, body, **options):
    _write(path, body, **options)
    if path.parent.name != "runs":
        stop_here()
journal._write_durably = _pause
""",
    # Just after a process of ours started: stress-ng in its cgroup; the delayer
    # (started warm ahead of need) once it took its order and bound its queue.
    "started": """
import subprocess
from pytest_chaos.faults import nfqueue
_Popen = subprocess.Popen
class _Pause(_Popen):
    def __init__(self, args, *a, **k):
        super().__init__(args, *a, **k)
        if any("stress-ng" in str(x) for x in args):
            deadline = time.monotonic() + 10
            while "pytest-chaos-" not in open(f"/proc/{self.pid}/cgroup").read():
                assert time.monotonic() < deadline, "it did not join its cgroup"
                time.sleep(0.01)
            stop_here()
subprocess.Popen = _Pause
_start = nfqueue.Worker.start
def _start_then_stop(self, *args, **kwargs):
    _start(self, *args, **kwargs)
    stop_here()
nfqueue.Worker.start = _start_then_stop
""",
    # In the undo, once the fault's own processes were stopped (stress-ng: its cgroup
    # not yet removed; the delayer: the mangle table not yet dropped).
    "undo": """
from pytest_chaos.targets.cgroup import OwnCgroup
from pytest_chaos.faults import nfqueue
OwnCgroup.remove = lambda self: stop_here()
_stop = nfqueue.Worker.stop
def _stop_then_stop(self):
    _stop(self)
    stop_here()
nfqueue.Worker.stop = _stop_then_stop
""",
}


@dataclass
class Killed:
    #: The stack before the inner pytest ran.
    before: dict[str, Any]
    project: Any
    #: What the inner test wrote once its fault was in force (str() of the handle's
    #: ``delayer_pid`` where it has one).
    said: str
    #: The killed run's options (its project and journal), for the next run.
    args: list[str]
    pytester: pytest.Pytester

    def cleanup(self) -> pytest.RunResult:
        """``pytest --chaos-cleanup`` with the killed run's project and journal."""
        return self.pytester.runpytest_subprocess(*self.args, "--chaos-cleanup")

    def assert_as_before(self) -> None:
        """The whole stack is as it was before the killed run (not only our names)."""
        assert differences(self.before, snapshot(self.project)) == []


@pytest.fixture
def kill_9_during(pytester, chaos_project, tmp_path) -> Callable[[str], Killed]:
    def run(call: str, timeout: float = 90.0, moment: str = "in-force") -> Killed:
        marker = tmp_path / "in-force"
        before = snapshot(chaos_project)
        if moment != "in-force":
            pytester.makeconftest(
                "import pathlib, time\n"
                "def stop_here():\n"
                f"    pathlib.Path({str(marker)!r}).write_text({moment!r})\n"
                "    time.sleep(300)  # held here until the outer test kills it\n" + MOMENTS[moment]
            )
        body = f"    handle = {call}\n"
        if moment == "in-force":
            body += (
                "    said = str(getattr(handle, 'delayer_pid', 'yes'))\n"
                f"    pathlib.Path({str(marker)!r}).write_text(said)\n"
                "    time.sleep(300)\n"
            )
        pytester.makepyfile("import pathlib, time\ndef test_x(chaos):\n" + body)
        args = [f"--chaos-project={chaos_project.name}", f"--chaos-journal={tmp_path / 'journal'}"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=pytester.path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def applied() -> bool:
                assert proc.poll() is None, "the inner pytest ended before applying its fault"
                return marker.exists() and bool(marker.read_text())

            wait_for_recovery(
                applied, timeout=timeout, interval=0.05, transient=(), what="the fault"
            )
        finally:
            proc.kill()
            proc.wait()
            # The runs that follow (cleanup, the next session) are not to stop there.
            (pytester.path / "conftest.py").unlink(missing_ok=True)
        return Killed(before, chaos_project, marker.read_text(), args, pytester)

    return run
