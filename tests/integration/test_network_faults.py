"""Network faults against the real stack, checked from inside the target container:
connections time out under DROP, are refused under REJECT, names still resolve,
other peers are untouched, and everything is gone after the undo."""

from __future__ import annotations

import json
import subprocess

import pytest

from pytest_chaos import ConfigurationError, UnsafeTarget
from pytest_chaos.faults.bandwidth import bandwidth
from pytest_chaos.faults.network import loss, partition, sweep_tables
from pytest_chaos.targets.netns import open_netns

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]

PROBE = """
import json, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {"resolved": None, "outcome": None}
try:
    out["resolved"] = socket.gethostbyname(host)
except OSError as exc:
    out["resolved"] = "error: %s" % exc
start = time.monotonic()
try:
    socket.create_connection((host, port), timeout=timeout).close()
    out["outcome"] = "connected"
except socket.timeout:
    out["outcome"] = "timeout"
except OSError as exc:
    out["outcome"] = "errno %s" % exc.errno
out["elapsed"] = time.monotonic() - start
print(json.dumps(out))
"""


def connect_from(service, host: str, port: int, timeout: float = 1.5) -> dict:
    """A TCP connect made by a process inside ``service``'s container."""
    result = service.container().exec_run(["python3", "-c", PROBE, host, str(port), str(timeout)])
    return json.loads(result.output.decode().strip().splitlines()[-1])


def tables(service) -> str:
    with open_netns(service.init_pid(), service.name) as ns:
        return ns.run(["nft", "list", "tables"])


def test_drop_partition_times_out_and_names_keep_resolving(chaos_project):
    api = chaos_project.service("trading-api")
    postgres = chaos_project.service("postgres")
    assert connect_from(api, "postgres", 5432)["outcome"] == "connected"
    with partition(api, [postgres], mode="drop") as handle:
        seen = connect_from(api, "postgres", 5432)
        assert seen["resolved"] == postgres.address()
        assert seen["outcome"] == "timeout"
        assert connect_from(api, "redis", 6379)["outcome"] == "connected"
        assert handle.matched_packets() > 0
        assert handle.table in tables(api)
    assert handle.table not in tables(api)
    assert connect_from(api, "postgres", 5432)["outcome"] == "connected"


def test_reject_partition_refuses_at_once(chaos_project):
    api = chaos_project.service("trading-api")
    with partition(api, [chaos_project.service("postgres")], mode="reject", direction="egress"):
        seen = connect_from(api, "postgres", 5432)
    assert seen["outcome"] in ("errno 111", "errno 104")  # refused or reset
    assert seen["elapsed"] < 0.5


def test_ingress_only_partition_leaves_outgoing_syns_but_drops_answers(chaos_project):
    api = chaos_project.service("trading-api")
    with partition(api, [chaos_project.service("postgres")], direction="ingress") as handle:
        assert connect_from(api, "postgres", 5432)["outcome"] == "timeout"
        assert handle.matched_packets() > 0  # the SYN-ACKs


def test_full_loss_is_a_partition_and_partial_loss_drops_about_that_share(chaos_project):
    api = chaos_project.service("trading-api")
    redis = chaos_project.service("redis")
    with loss(api, 100, [redis], direction="egress"):
        assert connect_from(api, "redis", 6379)["outcome"] == "timeout"
    # A datagram dropped on its way out fails its sendto with EPERM: count those too.
    sender = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "address = (socket.gethostbyname('redis'), 9)\n"
        "refused = 0\n"
        "for _ in range(2000):\n"
        "    try: s.sendto(b'x', address)\n"
        "    except PermissionError: refused += 1\n"
        "print(refused)\n"
    )
    with loss(api, "30%", [redis], direction="egress") as handle:
        refused = int(api.container().exec_run(["python3", "-c", sender]).output)
        matched = handle.matched_packets()
    assert matched == refused
    share = matched / 2000
    # Binomial(2000, 0.3): standard deviation 1%; 22-38% is 8 of them either side.
    assert 0.22 < share < 0.38, share


def test_bandwidth_limit_slows_a_bulk_send_and_is_removed(chaos_project):
    api = chaos_project.service("trading-api")
    send = (
        "import socket, time\n"
        "s = socket.create_connection(('redis', 6379))\n"
        "payload = b'x' * 1_000_000\n"
        "t = time.monotonic()\n"
        "head = b'*3\\r\\n$3\\r\\nSET\\r\\n$4\\r\\nbulk\\r\\n$%d\\r\\n' % len(payload)\n"
        "s.sendall(head + payload + b'\\r\\n')\n"
        "s.recv(16)\n"
        "print(time.monotonic() - t)\n"
    )
    unlimited = float(api.container().exec_run(["python3", "-c", send]).output)
    with bandwidth(api, "8mbit"):
        limited = float(api.container().exec_run(["python3", "-c", send]).output)
    after = float(api.container().exec_run(["python3", "-c", send]).output)
    # 8 Mbit to send: about 1 s at 8 mbit/s; unlimited it takes milliseconds.
    assert limited > 0.7, (unlimited, limited)
    assert after < limited / 4, (after, limited)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, p: partition(s, [p], mode="blackhole"), "mode must be one of drop, reject"),
        (lambda s, p: partition(s, [p], direction="up"), "direction must be one of"),
        (lambda s, p: partition(s, ["db.example"]), "neither a service nor an IPv4 address"),
        (lambda s, p: partition(s, [p, s]), "among its own peers"),
        (lambda s, p: partition(s, [s.address()]), "among its own peers"),
        (lambda s, p: loss(s, 50, [s]), "among its own peers"),
        (lambda s, p: loss(s, 0, [p]), "above 0%"),
        (lambda s, p: loss(s, "lots", [p]), "percentage"),
        (lambda s, p: bandwidth(s, "fast"), "is not a rate"),
        (lambda s, p: bandwidth(s, "1bit"), "between 8kbit and 100gbit"),
    ],
)
def test_bad_network_arguments_apply_nothing(chaos_project, call, message):
    api = chaos_project.service("trading-api")
    before = tables(api)
    with (
        pytest.raises(ConfigurationError, match=message),
        call(api, chaos_project.service("redis")),
    ):
        pass
    assert tables(api) == before


def test_a_process_in_our_own_namespace_is_refused():
    child = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(UnsafeTarget, match="network namespace"), open_netns(child.pid, "x"):
            pass
    finally:
        child.kill()
        child.wait()


def test_a_container_on_the_host_network_is_refused(chaos_project):
    """network_mode: host shares the host's namespace: no rule may go there."""
    image = chaos_project.service("redis").container().image.id
    container = chaos_project.client.containers.run(
        image, ["sleep", "600"], detach=True, network_mode="host"
    )
    try:
        container.reload()
        pid = container.attrs["State"]["Pid"]
        with pytest.raises(UnsafeTarget, match="refusing to change"), open_netns(pid, "hostnet"):
            pass
    finally:
        container.remove(force=True)


def test_sweep_removes_only_tables_of_dead_runs_in_the_projects_they_touched(chaos_project):
    api = chaos_project.service("trading-api")
    with open_netns(api.init_pid(), api.name) as ns:
        ns.run(["nft", "add", "table", "inet", "pytest_chaos_deadbeef_000001"])
        ns.run(["nft", "add", "table", "inet", "pytest_chaos_deadcafe_000001"])
        ns.run(["nft", "add", "table", "inet", "pytest_chaos_alive000_000001"])
        ns.run(["nft", "add", "table", "inet", "someone_elses"])
    kept = ["pytest_chaos_deadcafe_000001", "pytest_chaos_alive000_000001", "someone_elses"]
    try:
        said = sweep_tables(
            chaos_project.client,
            # deadcafe died too, but touched another project: this container is not its.
            {"deadbeef": {chaos_project.name}, "deadcafe": {"another-project"}},
        )
        assert any(s.startswith("swept") and "pytest_chaos_deadbeef_000001" in s for s in said)
        assert any(s.startswith("left") and "pytest_chaos_alive000_000001" in s for s in said)
        listed = tables(api)
        assert "pytest_chaos_deadbeef" not in listed
        for table in kept:
            assert table in listed
    finally:
        with open_netns(api.init_pid(), api.name) as ns:
            for table in kept:
                ns.run(["nft", "delete", "table", "inet", table])


def root_qdisc_of(service) -> str | None:
    from pytest_chaos.faults.qdisc import qdisc_session, root_qdisc

    with qdisc_session(service.init_pid(), service.name, "eth0") as (ipr, index):
        return root_qdisc(ipr, index)


KILL_9 = {
    "partition": (
        'chaos.partition("trading-api", ["postgres"])',
        lambda api: "pytest_chaos_" in tables(api),
        "pytest-chaos: undid partition (drop) trading-api*removed nft table*",
    ),
    "bandwidth": (
        'chaos.bandwidth("trading-api", "1mbit")',
        lambda api: root_qdisc_of(api) == "tbf",
        "pytest-chaos: undid bandwidth trading-api*removed the root qdisc of eth0",
    ),
}


@pytest.mark.parametrize("kind", sorted(KILL_9))
def test_kill_9_of_pytest_leaves_the_fault_and_cleanup_removes_it(
    chaos_project, kill_9_during, kind
):
    call, in_force, said = KILL_9[kind]
    api = chaos_project.service("trading-api")
    killed = kill_9_during(call)
    assert in_force(api), "the fault should outlive a SIGKILLed pytest"
    result = killed.cleanup()
    assert result.ret == 0
    result.stdout.fnmatch_lines([said])
    assert not in_force(api)
    assert connect_from(api, "postgres", 5432)["outcome"] == "connected"
    killed.assert_as_before()


def test_someone_elses_root_qdisc_is_refused_and_left_alone(chaos_project, tmp_path):
    from pytest_chaos import FaultError, Journal

    api = chaos_project.service("trading-api")
    with open_netns(api.init_pid(), api.name) as ns:
        ns.run(
            ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "7:", "pfifo", "limit", "500"]
        )
    journal = Journal(tmp_path, "testrun")
    api.project.journal, previous = journal, api.project.journal
    try:
        with (
            pytest.raises(FaultError, match="already has a root qdisc 'pfifo'"),
            bandwidth(api, "1mbit"),
        ):
            pass
        assert root_qdisc_of(api) == "pfifo"
        assert journal.entries() == []  # refused before anything was journaled
    finally:
        api.project.journal = previous
        with open_netns(api.init_pid(), api.name) as ns:
            ns.run(["tc", "qdisc", "del", "dev", "eth0", "root"])
