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
    """Remove what the journal's dead runs created and it has no entry for: each
    kind of leftover a registered fault declares, by its sweeper. Each dead run is
    forgotten once every sweep ran. False if a sweep could not run (the runs are
    then kept, to be swept again)."""
    from . import registry
    from .errors import ChaosError
    from .registry import DeadRuns
    from .targets.engine import docker_client

    dead = journal.dead_runs()
    if not dead:
        return True, []
    lines: list[str] = []
    ok = True
    try:
        client = docker_client()
    except ChaosError as exc:
        return False, [f"pytest-chaos: could not sweep the dead runs' leftovers: {exc}"]
    with contextlib.closing(client):
        alive = frozenset(r.run_id for r in journal.runs()) - {r.run_id for r in dead}
        runs = DeadRuns({run.run_id: run.projects for run in dead}, client, alive)
        for leftover, sweeper in registry.sweepers().items():
            try:
                lines += sweeper(runs)
            except Exception as exc:  # noqa: BLE001 - said; the other sweeps still run
                ok = False
                what = registry.LEFTOVERS[leftover]
                lines.append(f"could not sweep {leftover} ({what}): {type(exc).__name__}: {exc}")
    if ok:
        for run in dead:
            journal.forget_run(run.run_id)
    return ok, [f"pytest-chaos: {line}" for line in lines]
