"""An experiment that cannot fail proves nothing. Each case runs one experiment, in a
pytest of its own with its own stack, against an exchange with one weakness switched
on, and checks that it fails, and fails for that weakness: the assertion about it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = "tests/experiments"

CASES = [
    # (experiment test, weakness, what its failure must say)
    (
        "test_01_database_sudden_death.py::test_database_sudden_death",
        "no-cache-fallback",
        "market data failed during the outage",
    ),
    (
        "test_01_database_sudden_death.py::test_database_sudden_death",
        "ack-before-commit",
        "acknowledged orders are missing",
    ),
    (
        "test_01_database_sudden_death.py::test_database_process_death_reconnects_with_backoff",
        "no-backoff",
        "no exponential backoff in",
    ),
    (
        "test_02_network_partition.py::test_network_partition",
        "no-db-timeout",
        "a request took",
    ),
    (
        "test_03_memory_oom.py::test_memory_pressure_oom_kill",
        "ack-before-commit",
        "acknowledged orders are missing",
    ),
    (
        "test_04_cpu_throttling.py::test_cpu_throttling",
        "tight-timeouts",
        "requests failed while the CPU was throttled",
    ),
    (
        "test_05_disk_io_starvation.py::test_disk_io_starvation",
        "tight-timeouts",
        "the API reported itself not ready",
    ),
    (
        "test_06_connection_pool_exhaustion.py::test_connection_pool_exhaustion",
        "wait-for-connection",
        "a request waited",
    ),
    (
        "test_07_redis_failure.py::test_redis_failure",
        "blocking-events",
        "orders failed while Redis was down",
    ),
    (
        "test_08_nginx_failure.py::test_nginx_failure",
        "rate-limit-api",
        "port 8080 did not serve the whole burst",
    ),
    (
        "test_09_network_latency.py::test_network_latency",
        "no-db-timeout",
        "the timeouts never acted",
    ),
    (
        "test_10_cascade.py::test_cascade",
        "ack-before-commit",
        "acknowledged orders are missing",
    ),
    # Weaknesses only the history's checkers see: every other assertion passes.
    (
        "test_09_network_latency.py::test_network_latency",
        "retry-reinserts",
        "element(s) read more than once",
    ),
    (
        "test_09_network_latency.py::test_network_latency",
        "unlocked-match",
        "check failed: filled_is_traded",
    ),
    (
        "test_01_database_sudden_death.py::test_database_sudden_death",
        "stale-as-fresh",
        "fresh_reads_are_fresh",
    ),
]


#: Cases run this many at a time, each a pytest with a stack of its own. Two: every
#: weakened case failed for its reason 10/10 beside `stress-ng --cpu 0` (a CPU hog on
#: both cores, README "Stability of the verdicts"), more load than one other case.
AT_ONCE = 2


def _run_case(
    experiment: str, weakness: str, running: set[subprocess.Popen[str]]
) -> tuple[int, str]:
    """(exit code, output) of the experiment against its weakness, in a pytest of its
    own: its own compose project, its own free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", f"{EXPERIMENTS}/{experiment}",
            f"--exchange-weaken={weakness}", "-p", "no:cacheprovider", "-q", "--no-header",
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running.add(proc)
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # it undoes its faults and removes its stack on SIGTERM
        output, _ = proc.communicate(timeout=120)
    finally:
        running.discard(proc)
    return proc.returncode, output


@pytest.fixture(scope="module")
def weakened_runs(request) -> Iterator[dict[tuple[str, str], Future[tuple[int, str]]]]:
    """Every selected case started in the background, AT_ONCE at a time, in the
    order pytest will ask for them; each test waits for its own. Those still running
    when the module ends (a stop after a failure, an interruption) get SIGTERM, which
    an inner pytest answers by undoing its faults and removing its stack."""
    selected = [
        (item.callspec.params["experiment"], item.callspec.params["weakness"])
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    running: set[subprocess.Popen[str]] = set()
    with ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="weakened") as pool:
        runs = {case: pool.submit(_run_case, *case, running) for case in selected}
        try:
            yield runs
        finally:
            for run in runs.values():
                run.cancel()
            for proc in list(running):
                proc.terminate()


@pytest.mark.parametrize(
    ("experiment", "weakness", "reason"),
    CASES,
    ids=[f"{c[0].split('::')[1]}-{c[1]}" for c in CASES],
)
def test_the_experiment_fails_against_its_weakness(weakened_runs, experiment, weakness, reason):
    code, output = weakened_runs[(experiment, weakness)].result()
    assert code == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert reason in output, f"it failed, but not for {weakness!r}:\n{output[-3000:]}"
