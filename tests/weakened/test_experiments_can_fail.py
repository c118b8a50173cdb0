"""An experiment that cannot fail proves nothing. Each case runs one experiment, in a
pytest of its own with its own stack, against an exchange with one weakness switched
on, and checks that it fails, and fails for that weakness: the assertion about it."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize(
    ("experiment", "weakness", "reason"),
    CASES,
    ids=[f"{c[0].split('::')[1]}-{c[1]}" for c in CASES],
)
def test_the_experiment_fails_against_its_weakness(experiment, weakness, reason):
    # A pytest of its own: its own compose project, its own free ports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", f"{EXPERIMENTS}/{experiment}",
            f"--exchange-weaken={weakness}", "-p", "no:cacheprovider", "-q", "--no-header",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert reason in output, f"it failed, but not for {weakness!r}:\n{output[-3000:]}"
