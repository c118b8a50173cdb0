"""Shared by the integration tests: an inner pytest, attached to the running stack,
that applies a fault and is then killed with SIGKILL (no finalizer runs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pytest_chaos import wait_for_recovery


@dataclass
class Killed:
    #: What the inner test wrote once its fault was in force (str() of the handle's
    #: ``delayer_pid`` where it has one).
    said: str
    #: The killed run's options (its project and journal), for the next run.
    args: list[str]
    pytester: pytest.Pytester

    def cleanup(self) -> pytest.RunResult:
        """``pytest --chaos-cleanup`` with the killed run's project and journal."""
        return self.pytester.runpytest_subprocess(*self.args, "--chaos-cleanup")


@pytest.fixture
def kill_9_during(pytester, chaos_project, tmp_path) -> Callable[[str], Killed]:
    def run(call: str, timeout: float = 90.0) -> Killed:
        marker = tmp_path / "in-force"
        pytester.makepyfile(
            "import pathlib, time\n"
            "def test_x(chaos):\n"
            f"    handle = {call}\n"
            "    said = str(getattr(handle, 'delayer_pid', 'yes'))\n"
            f"    pathlib.Path({str(marker)!r}).write_text(said)\n"
            "    time.sleep(300)\n"
        )
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
        return Killed(marker.read_text(), args, pytester)

    return run
