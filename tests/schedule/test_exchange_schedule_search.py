"""The schedule search on the real exchange (exchange_search.py), each in a pytest of
its own with its own stack: against the weakness cache-idempotency it finds a failing
schedule, shrinks it to the two faults that matter, and the replay of that schedule
fails again; the healthy exchange passes the same search (same seed, same budget)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SEARCH = "tests/schedule/exchange_search.py"
#: A fixed seed keeps CI's draws the same run after run: the system's own
#: nondeterminism is what the confirmation runs are for. The README gives the search's
#: figures over several seeds.
SEED = "20261203"
#: Runs of the smallest failing schedule in the search. Shrinking stops at the edge of
#: what still fails (a smaller schedule must fail 3 runs in a row to be taken), so that
#: schedule fails only some of its runs: ``pause postgres at 0s for 1s; kill redis at
#: 0s for 0.5s`` (this seed's) failed 15 of 20 runs here idle and 10 of 20 with two busy
#: loops on both cores (measured 2026-12-03), and 17 of 40 with the exchange
#: reconnecting from 20 ms, 20 of 40 from 200 ms (4 replays of 20, beside other stacks,
#: 2026-12-07).
REPRODUCE = "10"
#: Runs of the replay. At a rate of 0.43, ten runs all hold up 1 time in 270, and
#: the edge schedule the shrink ends on may fail less often than that one: twenty all
#: hold up 1 time in 75 000 at 0.43, 1 in 300 at 0.25.
REPLAY_RUNS = "20"


def _run(
    tmp_path: Path, *args: str, weaken: str | None = None, runs: str = REPRODUCE
) -> tuple[str, dict[str, str], int]:
    xml = tmp_path / f"search-{len(list(tmp_path.iterdir()))}.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXCHANGE_", "SCHEDULE_"))}
    env["SCHEDULE_SEED"] = SEED
    env["SCHEDULE_REPRODUCE"] = runs
    command = [
        sys.executable, "-m", "pytest", SEARCH, "-p", "no:cacheprovider", "-q", "--no-header",
        f"--junitxml={xml}", *args,
    ]  # fmt: skip
    if weaken:
        command.append(f"--exchange-weaken={weaken}")
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    output = done.stdout + done.stderr
    assert xml.exists(), output[-3000:]
    tree = ET.parse(xml)  # noqa: S314 - pytest wrote it
    properties = {p.get("name", ""): p.get("value", "") for p in tree.iter("property")}
    return output, properties, done.returncode


def test_the_search_finds_and_shrinks_the_combined_weakness_and_replays_it(tmp_path):
    output, found, code = _run(tmp_path, weaken="cache-idempotency")
    assert code == pytest.ExitCode.TESTS_FAILED, output[-4000:]
    assert "shrank it to 2 step(s)" in output, output[-4000:]
    # Orders stored twice: the history's set-full check says so.
    assert "element(s) read more than once" in output, output[-4000:]
    steps = [found["schedule_step_1"], found["schedule_step_2"]]
    assert "schedule_step_3" not in found
    # Both stores, and PostgreSQL stalled (paused or cut off), not killed: a kill
    # aborts the orders' transactions, so no retry can store one twice.
    assert {s.split()[1] for s in steps} == {"postgres", "redis"}, steps
    stall = next(s for s in steps if s.split()[1] == "postgres")
    assert stall.split()[0] in ("pause", "partition"), steps
    failures, runs = (int(n) for n in found["schedule_reproduced"].split("/"))
    assert runs == int(REPRODUCE)
    assert failures >= 1, found["schedule_reproduced"]

    # The replay runs exactly that schedule, and it breaks the exchange again.
    output, replayed, code = _run(
        tmp_path,
        f"--chaos-replay={found['schedule_replay']}",
        weaken="cache-idempotency",
        runs=REPLAY_RUNS,
    )
    assert code == pytest.ExitCode.TESTS_FAILED, output[-4000:]
    assert "the replayed schedule failed" in output, output[-4000:]
    assert replayed["schedule_replay"] == found["schedule_replay"]


def test_the_healthy_exchange_passes_the_same_search(tmp_path):
    output, figures, code = _run(tmp_path)
    assert code == pytest.ExitCode.OK, output[-4000:]
    assert figures["schedule_examples_not_run"] == "0"
    assert figures["schedule_unconfirmed_failures"] == "0"
    assert int(figures["schedule_examples_held"]) == int(figures["schedule_examples"]) >= 10
    assert int(figures["schedule_steps_applied"]) > 0
