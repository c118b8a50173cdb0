"""Benchmark of the fault library against the bundled exchange.

For each fault kind: the median time from entering the fault until it is
observably in force, and from leaving it until its undo is observably complete,
over N runs; beside it, in the same run, the docker CLI (or nsenter + CLI) way of
doing the same thing. Then the accuracy of injected latency at 1 and at 10
concurrent connections on the path this machine uses.

    sudo .venv/bin/python benchmarks/faults.py [--runs 20] [--project NAME] [--json FILE]

It starts its own copy of the exchange (or attaches to --project) and removes it
afterwards. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_chaos import ComposeProject, Journal  # noqa: E402
from pytest_chaos.faults import (  # noqa: E402
    bandwidth,
    network,
    nfqueue,
    process,
    resources,
)
from pytest_chaos.faults import latency as latency_mod  # noqa: E402
from pytest_chaos.faults.qdisc import qdisc_session, root_qdisc  # noqa: E402
from pytest_chaos.targets.cgroup import cgroup_of  # noqa: E402
from pytest_chaos.targets.netns import open_netns  # noqa: E402

#: Between two checks of whether a fault is in force, where no kernel notification
#: says so (a qdisc, a cgroup file, a container's state): the time taken is that of
#: the check that saw it, an upper bound by at most one check and one interval.
#: Kills (the pidfd turns readable) and rules (an nftables monitor) are not polled.
POLL_S = 0.0005


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(POLL_S)
    return time.perf_counter()


class ProcessGone:
    """In force once the service's main process (as it was before the fault) has
    exited: its pidfd turns readable then, so the moment is seen without polling."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.pidfd = -1

    def arm(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
        self.pidfd = os.pidfd_open(self.service.main_pid())

    def wait(self, timeout: float = 60.0) -> float:
        if not select.select([self.pidfd], [], [], timeout)[0]:
            raise TimeoutError("the process did not exit")
        return time.perf_counter()

    def __call__(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])


RULE_LISTENER = """
import ctypes, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.setns(int(sys.argv[1]), 0x40000000) == 0, "setns"
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
sock.bind((0, 0))
sock.setsockopt(270, 1, 7)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES
print("ready", flush=True)
seen = set()
while len(seen) < 2:
    data = sock.recv(1 << 16)
    now = time.perf_counter()
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind in (0x0a06, 0x0a08) and kind not in seen:  # NFT_MSG_NEWRULE, DELRULE
            seen.add(kind)
            print(kind, now, flush=True)
        offset += max(16, (length + 3) & ~3)
"""


class RuleChange:
    """In force when the kernel announces a new rule in the service's network
    namespace, undone when it announces one deleted: an nftables monitor socket there
    (NETLINK_NETFILTER, group NFNLGRP_NFTABLES) hears each committed change the moment
    it is in force, whoever made it (libnftables, nft, iptables-nft). The listener is
    a process of its own, blocked on the socket, noting when each announcement
    arrives (CLOCK_MONOTONIC, perf_counter's clock): a thread of this process would
    note it only once the applying thread let go of the interpreter."""

    NEW_RULE, DEL_RULE = (10 << 8) | 6, (10 << 8) | 8  # NFNL_SUBSYS_NFTABLES, NFT_MSG_*

    def __init__(self, service: Any, before: Callable[[], None] | None = None) -> None:
        self.service = service
        self.before = before  # called before each measurement, off the clock
        self.proc: subprocess.Popen[str] | None = None
        self.seen: dict[int, float] = {}

    def arm(self) -> None:
        if self.before is not None:
            self.before()
        self._stop()
        self.seen = {}
        with open_netns(self.service.init_pid(), self.service.name) as ns:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RULE_LISTENER, str(ns.fd)],
                pass_fds=(ns.fd,),
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the rule listener did not start")

    def wait(self, kind: int, timeout: float = 60.0) -> float:
        assert self.proc is not None
        assert self.proc.stdout is not None
        deadline = time.perf_counter() + timeout
        while kind not in self.seen:
            if not select.select([self.proc.stdout], [], [], deadline - time.perf_counter())[0]:
                raise TimeoutError("no rule change was announced")
            line = self.proc.stdout.readline().split()
            if not line:
                raise RuntimeError("the rule listener ended")
            self.seen[int(line[0])] = float(line[1])
        return self.seen[kind]

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def __call__(self) -> bool:  # not polled: measure() waits on the announcements
        raise NotImplementedError


def measure(
    enter: Callable[[], Any], leave: Callable[[Any], None], in_force: Callable[[], bool]
) -> tuple[float, float]:
    if isinstance(in_force, RuleChange):
        in_force.arm()
        t0 = time.perf_counter()
        token = enter()
        t1 = in_force.wait(RuleChange.NEW_RULE)
        t2 = time.perf_counter()
        leave(token)
        t3 = in_force.wait(RuleChange.DEL_RULE)
        in_force._stop()
        return t1 - t0, t3 - t2
    if isinstance(in_force, ProcessGone):
        in_force.arm()  # before the clock starts: the process as it was
        t0 = time.perf_counter()
        token = enter()
        t1 = in_force.wait()
        t2 = time.perf_counter()
        leave(token)
        # Undone once the service passes its health check again (ours waits for that
        # itself; `docker start` returns before).
        return t1 - t0, wait_until(in_force.service.is_healthy) - t2
    t0 = time.perf_counter()
    token = enter()
    t1 = wait_until(in_force)
    t2 = time.perf_counter()
    leave(token)
    t3 = wait_until(lambda: not in_force())
    return t1 - t0, t3 - t2


def cm_pair(
    factory: Callable[[], AbstractContextManager[Any]],
) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    def enter() -> Any:
        cm = factory()
        cm.__enter__()
        return cm

    def leave(cm: Any) -> None:
        cm.__exit__(None, None, None)

    return enter, leave


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def qdisc(service: Any) -> str | None:
    with qdisc_session(service.init_pid(), service.name, "eth0") as (ipr, index):
        return root_qdisc(ipr, index)


def cgroup_value(service: Any, controller: str, name: str) -> str:
    return cgroup_of(service.main_pid()).read(controller, name)


@contextlib.contextmanager
def stack(project_name: str | None) -> Iterator[ComposeProject]:
    if project_name:
        yield ComposeProject(project_name)
        return
    name = f"chaos-bench-{os.getpid()}"
    env = dict(os.environ)
    env.setdefault("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
    for var in ("EXCHANGE_HTTP_PORT", "EXCHANGE_API_PORT", "EXCHANGE_DB_PORT"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env[var] = str(s.getsockname()[1])
    compose = [
        shutil.which("docker-compose") or "docker-compose",
        "-f",
        str(ROOT / "docker-compose.yml"),
        "-p",
        name,
    ]
    try:
        subprocess.run([*compose, "up", "-d"], check=True, env=env, capture_output=True)
        project = ComposeProject(name)
        wait_until(project.all_healthy, timeout=120)
        yield project
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, check=False)


def fault_cases(p: ComposeProject) -> list[tuple[str, Any, Any, Callable[[], bool], Any, Any, int]]:
    """(name, ours-enter, ours-leave, in_force, cli-enter, cli-leave, settle seconds)."""
    redis, nginx, api, pg = (p.service(n) for n in ("redis", "nginx", "trading-api", "postgres"))
    rid = redis.container_id
    docker = shutil.which("docker") or "docker"
    pg_ip = pg.address()

    def kill_enter_cli() -> Any:
        run([docker, "kill", "-s", "KILL", rid])

    def kill_leave_cli(_: Any) -> None:
        run([docker, "start", rid])

    def api_pid() -> str:
        return str(api.init_pid())

    cases = [
        (
            # Docker backs restarts off (100 ms, doubling) while a container keeps
            # dying within 10 s of its start: kills are spaced by more.
            "kill (SIGKILL, restart policy)",
            *cm_pair(lambda: process.kill(redis, "SIGKILL")),
            ProcessGone(redis),
            kill_enter_cli,
            kill_leave_cli,
            11.0,
        ),
        (
            "pause",
            *cm_pair(lambda: process.pause(redis)),
            lambda: bool(redis.state()["Paused"]),
            lambda: run([docker, "pause", rid]),
            lambda _: run([docker, "unpause", rid]),
            0.0,
        ),
        (
            "stop / start",
            *cm_pair(lambda: process.stop(nginx, grace=1)),
            lambda: not nginx.is_healthy(),
            lambda: run([docker, "stop", "-t", "1", nginx.container_id]),
            lambda _: run([docker, "start", nginx.container_id]),
            0.0,
        ),
        (
            "partition (reject)",
            *cm_pair(lambda: network.partition(api, [pg], mode="reject")),
            RuleChange(api),
            lambda: run(
                [
                    "nsenter",
                    "-t",
                    api_pid(),
                    "-n",
                    "iptables",
                    "-I",
                    "OUTPUT",
                    "-d",
                    pg_ip,
                    "-j",
                    "REJECT",
                ]
            ),
            lambda _: run(
                [
                    "nsenter",
                    "-t",
                    api_pid(),
                    "-n",
                    "iptables",
                    "-D",
                    "OUTPUT",
                    "-d",
                    pg_ip,
                    "-j",
                    "REJECT",
                ]
            ),
            0.0,
        ),
        (
            "loss 10%",
            *cm_pair(lambda: network.loss(api, 10, [pg])),
            RuleChange(api),
            lambda: run(
                [
                    "nsenter",
                    "-t",
                    api_pid(),
                    "-n",
                    "iptables",
                    "-I",
                    "OUTPUT",
                    "-d",
                    pg_ip,
                    *LOSS_RULE,
                ]
            ),
            lambda _: run(
                [
                    "nsenter",
                    "-t",
                    api_pid(),
                    "-n",
                    "iptables",
                    "-D",
                    "OUTPUT",
                    "-d",
                    pg_ip,
                    *LOSS_RULE,
                ]
            ),
            0.0,
        ),
        (
            "bandwidth (tbf)",
            *cm_pair(lambda: bandwidth.bandwidth(api, "10mbit")),
            lambda: qdisc(api) == "tbf",
            lambda: run(
                [
                    "nsenter",
                    "-t",
                    api_pid(),
                    "-n",
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    "10mbit",
                    "burst",
                    "32kb",
                    "latency",
                    "400ms",
                ]
            ),
            lambda _: run(
                ["nsenter", "-t", api_pid(), "-n", "tc", "qdisc", "del", "dev", "eth0", "root"]
            ),
            0.0,
        ),
        (
            # The delayer the previous undo started is warm after about 0.1 s here.
            "latency 50 ms",
            *cm_pair(lambda: latency_mod.latency(api, "50ms", peers=[pg])),
            RuleChange(api),
            None,
            None,
            0.5,
        ),
        (
            # The first latency fault of a session that had no chaos test yet (the
            # chaos fixture starts a delayer as a test begins): Python starts first.
            "latency 50 ms, no warm delayer",
            *cm_pair(lambda: latency_mod.latency(api, "50ms", peers=[pg])),
            RuleChange(api, before=nfqueue._drop_spare),
            None,
            None,
            0.0,
        ),
        (
            "cpu quota 0.5",
            *cm_pair(lambda: resources.cpu_quota(api, 0.5)),
            lambda: cgroup_value(api, "cpu", "cpu.cfs_quota_us") == "50000",
            lambda: run(
                [
                    docker,
                    "update",
                    "--cpu-period",
                    "100000",
                    "--cpu-quota",
                    "50000",
                    api.container_id,
                ]
            ),
            lambda _: run([docker, "update", "--cpu-quota", "-1", api.container_id]),
            0.0,
        ),
        (
            "memory cap 400m",
            *cm_pair(lambda: resources.memory_cap(api, "400m")),
            lambda: cgroup_value(api, "memory", "memory.limit_in_bytes") == str(400 * 2**20),
            None,
            None,
            0.0,
        ),
        (
            "io throttle",
            *cm_pair(lambda: resources.io_throttle(pg, write_bps="10m")),
            lambda: "10485760" in cgroup_value(pg, "blkio", "blkio.throttle.write_bps_device"),
            None,
            None,
            0.0,
        ),
    ]
    return cases


LOSS_RULE = ["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]


LATENCY_PROBE = """
import json, socket, sys, threading, time
host, port, conns, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = []
lock = threading.Lock()
def worker():
    for _ in range(per):
        t = time.monotonic()
        socket.create_connection((host, port), timeout=10).close()
        with lock:
            out.append((time.monotonic() - t) * 1000)
threads = [threading.Thread(target=worker) for _ in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""


def latency_accuracy(p: ComposeProject) -> list[dict[str, Any]]:
    api, pg = p.service("trading-api"), p.service("postgres")

    def sample(conns: int) -> list[float]:
        result = api.container().exec_run(
            [
                "python3",
                "-c",
                LATENCY_PROBE,
                "postgres",
                "5432",
                str(conns),
                str(max(3, 30 // conns)),
            ]
        )
        return json.loads(result.output)

    rows = []
    for conns in (1, 10):
        base = statistics.median(sample(conns))
        for delay_ms in (50, 100, 200):
            with latency_mod.latency(api, f"{delay_ms}ms", peers=[pg]) as handle:
                times = sample(conns)
            added = [t - base for t in times]
            rows.append(
                {
                    "connections": conns,
                    "injected_ms": delay_ms,
                    "method": handle.method,
                    "added_median_ms": round(statistics.median(added), 2),
                    "error_median_ms": round(statistics.median(added) - delay_ms, 2),
                    "added_p95_ms": round(sorted(added)[int(0.95 * (len(added) - 1))], 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--project", default=None, help="attach to this running exchange project")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--only", default="", help="only the faults whose names contain this (e.g. kill)"
    )
    parser.add_argument("--no-accuracy", action="store_true", help="skip the latency accuracy")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/faults.py needs root (sudo): faults act on container processes.")
    # SIGTERM unwinds like Ctrl-C, so the faults and the benchmark's stack are undone.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict[str, Any] = {"faults": [], "latency": []}
    with stack(args.project) as project:
        project.journal = Journal(
            Path("/var/lib/pytest-chaos/journal"), "bench" + os.urandom(2).hex()
        )
        for name, enter, leave, in_force, cli_enter, cli_leave, settle in fault_cases(project):
            if args.only not in name:
                continue
            runs = args.runs
            ours, cli = [], []
            for _ in range(runs):
                ours.append(measure(enter, leave, in_force))
                wait_until(project.all_healthy)
                time.sleep(settle)  # let Docker's restart backoff reset
                if cli_enter is not None:
                    cli.append(measure(cli_enter, cli_leave, in_force))
                    wait_until(project.all_healthy)
                    time.sleep(settle)
            row = {
                "fault": name,
                "runs": runs,
                "apply_ms": round(statistics.median(a for a, _ in ours) * 1000, 1),
                "undo_ms": round(statistics.median(u for _, u in ours) * 1000, 1),
                "cli_apply_ms": round(statistics.median(a for a, _ in cli) * 1000, 1)
                if cli
                else None,
                "cli_undo_ms": round(statistics.median(u for _, u in cli) * 1000, 1)
                if cli
                else None,
            }
            results["faults"].append(row)
            print(
                f"{name:32} apply {row['apply_ms']:8} ms  undo {row['undo_ms']:8} ms   "
                f"cli apply {row['cli_apply_ms']} ms  cli undo {row['cli_undo_ms']} ms  ({runs} runs)",
                flush=True,
            )
        results["latency"] = [] if args.no_accuracy else latency_accuracy(project)
        for row in results["latency"]:
            print(
                f"latency {row['injected_ms']:4} ms x{row['connections']:2} conns ({row['method']}): "
                f"added median {row['added_median_ms']} ms (error {row['error_median_ms']:+}), p95 {row['added_p95_ms']} ms",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
