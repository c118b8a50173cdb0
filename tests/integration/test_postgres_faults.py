"""PostgreSQL faults against the real database."""

from __future__ import annotations

import psycopg
import pytest

from pytest_chaos import ConfigurationError, wait_for_recovery
from pytest_chaos.faults.postgres import connection_hog, max_connections, psql

pytestmark = [pytest.mark.root, pytest.mark.database, pytest.mark.slow]


def auto_conf(postgres) -> str:
    return psql(postgres, "SELECT pg_read_file('postgresql.auto.conf')")


def test_max_connections_is_lowered_with_a_restart_and_restored(chaos_project, exchange):
    postgres = chaos_project.service("postgres")
    before, conf_before = psql(postgres, "SHOW max_connections"), auto_conf(postgres)
    with max_connections(postgres, 20) as handle:
        assert psql(postgres, "SHOW max_connections") == "20"
        held = []

        def open_until_refused():
            for _ in range(25):
                held.append(psycopg.connect(exchange.db_dsn, connect_timeout=5))

        refused = r"too many clients|remaining connection slots are reserved"
        with pytest.raises(psycopg.OperationalError, match=refused):
            open_until_refused()
        for conn in held:
            conn.close()
        assert len(held) < 20
    assert psql(postgres, "SHOW max_connections") == before
    assert auto_conf(postgres) == conf_before
    assert postgres.is_healthy()
    assert handle.restart_s > 0


@pytest.mark.parametrize("value", [0, 2, -5, "20", True, 10**9])
def test_bad_max_connections_is_refused_without_a_restart(chaos_project, value):
    postgres = chaos_project.service("postgres")
    started = postgres.state()["StartedAt"]
    with (
        pytest.raises(ConfigurationError, match="max_connections"),
        max_connections(postgres, value),
    ):
        pass
    assert postgres.state()["StartedAt"] == started


def test_connection_hog_holds_and_releases_connections(chaos_project, exchange):
    postgres = chaos_project.service("postgres")
    with connection_hog(postgres, exchange.db_dsn, 10) as handle:
        held = psql(
            postgres,
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE application_name = '{handle.application_name}'",
        )
        assert held == "10"

    def released() -> bool:
        left = psql(
            postgres,
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE application_name = '{handle.application_name}'",
        )
        return left == "0"

    wait_for_recovery(released, timeout=10, what="the hog's connections to end")


def test_kill_9_of_pytest_leaves_max_connections_and_cleanup_restores_it(
    chaos_project, kill_9_during
):
    postgres = chaos_project.service("postgres")
    before = psql(postgres, "SHOW max_connections")
    killed = kill_9_during('chaos.max_connections("postgres", 15)')
    assert psql(postgres, "SHOW max_connections") == "15"
    result = killed.cleanup()
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"pytest-chaos: undid max_connections postgres*is {before} again"])
    assert psql(postgres, "SHOW max_connections") == before
    killed.assert_as_before()
