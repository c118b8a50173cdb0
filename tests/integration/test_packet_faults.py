"""dns_failure and disorder against the real stack: what the service inside sees (its
lookups, its connections), and that the rest of its traffic is untouched. (Applied
with every other fault, undone however the test ends and after kill -9:
test_every_fault.py; their bytes and counts: tests/unit/test_packet_policies.py.)"""

from __future__ import annotations

import json
import time

import pytest

from pytest_chaos import ConfigurationError
from pytest_chaos.faults.disorder import disorder
from pytest_chaos.faults.dns import dns_failure

pytestmark = [pytest.mark.root, pytest.mark.network]

# One try of one second per lookup (glibc's resolver: 5 s and 2 tries by default).
QUICK = {"RES_OPTIONS": "timeout:1 attempts:1"}


def lookup(service, name: str) -> tuple[int, float]:
    """``getent hosts name`` inside the container: its exit status and seconds."""
    began = time.monotonic()
    result = service.container().exec_run(["getent", "hosts", name], environment=QUICK)
    return result.exit_code, time.monotonic() - began


CONNECTS = """
import json, socket, sys
for _ in range(int(sys.argv[3])):
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
print(json.dumps("ok"))
"""


def connects(service, host: str, port: int, count: int = 20) -> bool:
    out = service.container().exec_run(["python3", "-c", CONNECTS, host, str(port), str(count)])
    return out.exit_code == 0 and json.loads(out.output) == "ok"


@pytest.mark.parametrize("mode", ["servfail", "timeout"])
def test_lookups_of_the_chosen_name_fail_and_the_rest_resolve(chaos_project, mode):
    api = chaos_project.service("trading-api")
    assert lookup(api, "redis")[0] == 0
    with dns_failure(api, mode=mode, names=["redis"]) as handle:
        failed, took = lookup(api, "redis")
        resolved, _ = lookup(api, "postgres")
        effect = handle.effect()
    assert failed == 2, "getent found redis while its lookups were to fail"  # 2: not found
    if mode == "servfail":
        # Answered at once: measured 0.03-0.06 s (the exec's own cost included).
        assert took < 0.8, took
    else:
        assert took >= 0.9, took  # waited out its one second
    assert resolved == 0, "another name failed to resolve"
    assert effect is not None
    assert effect.took, effect
    assert lookup(api, "redis")[0] == 0  # undone: it resolves again


def test_without_names_every_lookup_fails_but_addresses_still_connect(chaos_project):
    api = chaos_project.service("trading-api")
    address = api.container().exec_run(["getent", "hosts", "postgres"]).output.split()[0]
    with dns_failure(api) as handle:
        assert lookup(api, "postgres")[0] == 2
        assert lookup(api, "redis")[0] == 2
        assert connects(api, address.decode(), 5432)  # by address: the traffic flows
    effect = handle.effect()
    assert effect is not None
    assert effect.took, effect
    assert "lookups answered SERVFAIL" in effect.evidence


def test_disorder_reorders_and_duplicates_and_connections_still_work(chaos_project):
    api = chaos_project.service("trading-api")
    postgres = chaos_project.service("postgres")
    with disorder(api, [postgres], reorder=50, duplicate=20, gap="30ms") as handle:
        assert connects(api, "postgres", 5432)
        assert connects(api, "redis", 6379)
        effect = handle.effect()
    assert effect is not None
    assert effect.took, effect
    assert "sent twice" in effect.evidence


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda api: dns_failure(api, mode="slow"), "mode must be one of"),
        (lambda api: dns_failure(api, names="redis"), "names must be a list"),
        (lambda api: disorder(api, reorder=0, duplicate=0), "both 0"),
        (lambda api: disorder(api, reorder=150), "percentage from 0 to 100"),
        (lambda api: disorder(api, gap="5s"), "gap must be from 1 ms to 2 s"),
    ],
    ids=["dns-mode", "dns-names", "nothing", "over-100", "long-gap"],
)
def test_bad_arguments_apply_nothing(chaos_project, call, message):
    api = chaos_project.service("trading-api")
    with pytest.raises(ConfigurationError, match=message), call(api):
        pass
    assert lookup(api, "redis")[0] == 0
