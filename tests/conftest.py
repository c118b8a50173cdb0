"""Markers by folder (tests/unit, tests/plugin, tests/integration, tests/experiments),
and the inner pytest the teardown and interruption tests signal or kill."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from pytest_chaos import wait_for_recovery

# Shared, noisy machines: Hypothesis' default 200 ms deadline would fail on load, not
# on a bug. The examples stay the same; only the timing check is off.
settings.register_profile("chaos", deadline=None)
settings.load_profile("chaos")

# A shell without job control starts its background commands with SIGINT ignored, and
# an ignored signal stays ignored in every process started after: the inner pytests
# the Ctrl-C tests interrupt would never see it (seen when CI was started with `&`
# from a script). A handler of our own is reset to the default in each child instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_LEVELS = {
    "unit": "unit",
    "plugin": "plugin",
    "integration": "integration",
    "weakened": "weakened",
    "schedule": "schedule",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        try:
            level = item.path.relative_to(here).parts[0]
        except ValueError:
            continue
        if level in _LEVELS:
            item.add_marker(getattr(pytest.mark, _LEVELS[level]))


class InnerPytest:
    """A pytest of its own, started in a folder with its output piped, for a test to
    signal or kill once the inner test has reached a point (its faults in force)."""

    @staticmethod
    def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @staticmethod
    def wait(
        proc: subprocess.Popen[str],
        reached: Callable[[], bool],
        *,
        what: str,
        timeout: float,
        interval: float = 0.05,
        output: Callable[[], str] | None = None,
    ) -> None:
        """Poll ``reached`` until it holds; fail at once, with the inner output, if
        the inner pytest ended first. ``output`` gives that output where a reader
        thread consumes the pipe."""

        def check() -> bool:
            if proc.poll() is not None:
                text = (
                    output() if output is not None else (proc.stdout.read() if proc.stdout else "")
                )
                pytest.fail(f"the inner pytest ended before {what}:\n{text}")
            return reached()

        wait_for_recovery(check, timeout=timeout, interval=interval, transient=(), what=what)


@pytest.fixture
def inner_pytest() -> type[InnerPytest]:
    return InnerPytest
