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
from pytest_chaos.faults import latency as latency_mod  # noqa: E402
from pytest_chaos.faults import network, process, resources  # noqa: E402
from pytest_chaos.faults.network import qdisc_session, root_qdisc  # noqa: E402
from pytest_chaos.targets.cgroup import cgroup_of  # noqa: E402
from pytest_chaos.targets.netns import open_netns  # noqa: E402

POLL_S = 0.002


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(POLL_S)
    return time.perf_counter()


def measure(
    enter: Callable[[], Any], leave: Callable[[Any], None], in_force: Callable[[], bool]
) -> tuple[float, float]:
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


def nft_tables(service: Any) -> str:
    with open_netns(service.init_pid(), service.name) as ns:
        return ns.run(["nft", "list", "tables"])


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

    def redis_down() -> bool:
        return not redis.is_healthy()

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
            redis_down,
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
            lambda: "pytest_chaos_" in nft_tables(api) or "REJECT" in _ipt(api),
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
            lambda: "pytest_chaos_" in nft_tables(api) or "statistic" in _ipt(api),
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
            *cm_pair(lambda: network.bandwidth(api, "10mbit")),
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
            "latency 50 ms",
            *cm_pair(lambda: latency_mod.latency(api, "50ms", peers=[pg])),
            lambda: "PYTEST_CHAOS" in _ipt(api, "mangle"),
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


def _ipt(service: Any, table: str = "filter") -> str:
    with open_netns(service.init_pid(), service.name) as ns:
        return ns.run(["iptables", "-t", table, "-S"])


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
        results["latency"] = latency_accuracy(project)
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
