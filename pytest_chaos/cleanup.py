"""``pytest --chaos-cleanup``: undo what the journal holds of runs that died, then
sweep what those runs created and the journal missed (teardown's fourth and fifth
layers), and say what was done."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from .session import ChaosPlugin
from .settings import ChaosSettings

if TYPE_CHECKING:
    from .journal import Journal


def run(settings: ChaosSettings) -> int:
    """The cleanup, as pytest's exit code: 0 when everything was undone."""
    plugin = ChaosPlugin(settings, in_use=True)
    lines: list[str] = []
    ok = plugin.replay_journal(lines.append)
    swept_ok, swept = sweep(plugin.journal)
    lines += swept
    for line in lines or [f"pytest-chaos: nothing to undo in {plugin.journal.directory}"]:
        sys.stdout.write(line + "\n")
    return 0 if ok and swept_ok else 1


def sweep(journal: Journal) -> tuple[bool, list[str]]:
    """Remove what the journal's dead runs created and it has no entry for; forget
    each dead run once nothing of it is left. False if the sweep could not run."""
    from .errors import ChaosError
    from .faults.network import sweep_tables
    from .targets.engine import docker_client

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
