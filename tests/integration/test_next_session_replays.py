"""kill -9 of pytest during the fault kinds not covered beside their families, each
followed by an ordinary next run (not --chaos-cleanup): the session replays the
journal at its start, says what it undid, and the fault is gone."""

from __future__ import annotations

import pytest

from pytest_chaos import wait_for_recovery
from pytest_chaos.faults.postgres import psql
from pytest_chaos.targets.cgroup import cgroup_of
from pytest_chaos.targets.netns import open_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]


def nft_tables(service) -> str:
    with open_netns(service.init_pid(), service.name) as ns:
        return ns.run(["nft", "list", "tables"])


def blkio(service) -> str:
    cg = cgroup_of(service.main_pid())
    if cg.version == 1:
        return cg.read("blkio", "blkio.throttle.write_bps_device")
    return cg.read("io", "io.max")


def stress_workers() -> int:
    # Processes named stress-ng-hdd are the workers io_contention started: counted
    # here only to see them gone, never signalled by name.
    count = 0
    for comm in __import__("pathlib").Path("/proc").glob("[0-9]*/comm"):
        try:
            count += comm.read_text().strip().startswith("stress-ng")
        except OSError:
            continue
    return count


def hog_connections(postgres) -> int:
    return int(
        psql(
            postgres,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'pytest_chaos_hog_%'",
        )
    )


HOG = (
    'chaos.connection_hog("postgres", "postgresql://exchange:exchange@127.0.0.1:%d/exchange" '
    '% chaos.service("postgres").published_port(5432)[1], 5)'
)

CASES = {
    "loss": (
        'chaos.loss("trading-api", 50, ["redis"])',
        "trading-api",
        lambda s: "pytest_chaos_" in nft_tables(s),
    ),
    "io_throttle": (
        'chaos.io_throttle("postgres", write_bps="5m")',
        "postgres",
        lambda s: "5242880" in blkio(s),
    ),
    "io_contention": (
        'chaos.io_contention("postgres", workers=1, bytes_per_worker="16m")',
        "postgres",
        lambda s: stress_workers() > 0,
    ),
    "connection_hog": (HOG, "postgres", lambda s: hog_connections(s) > 0),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_next_session_undoes_what_a_killed_one_left(
    pytester, chaos_project, kill_9_during, kind
):
    call, target, in_force = CASES[kind]
    service = chaos_project.service(target)
    killed = kill_9_during(call)
    if kind == "connection_hog":
        # The hog's connections were sockets of the killed pytest: the kernel closed
        # them with it, and PostgreSQL notices within moments. Nothing else to see.
        pass
    else:
        assert in_force(service), "the fault should outlive a SIGKILLed pytest"
    pytester.makepyfile(test_next="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(*[a for a in killed.args], "test_next.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-chaos: undid *left by run * (pytest pid *, gone)*"])
    wait_for_recovery(lambda: not in_force(service), timeout=10, what=f"the end of {kind}")
