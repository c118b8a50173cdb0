"""For the swarm tests: a Python process that makes a swarm (and faults on it) with a
journal, says so, and is then killed with SIGKILL, as a pytest that dies would be."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def kill_9_once_in_force(
    script: str, journal: Path, run_id: str, marker: str, *, before: Callable[[], None] = list
) -> None:
    """Run ``script`` (given the journal folder and the run id as argv[1:3]) until it
    prints ``marker``, call ``before()``, then SIGKILL it: nothing of it is undone."""
    with subprocess.Popen(
        [sys.executable, "-c", script, str(journal), run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as owner:  # fmt: skip
        try:
            assert owner.stdout is not None
            line = owner.stdout.readline()
            assert line == f"{marker}\n", owner.stderr.read() if owner.stderr else ""
            before()
        finally:
            owner.send_signal(signal.SIGKILL)
