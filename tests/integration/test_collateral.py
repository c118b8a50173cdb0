"""Collateral damage is reported: a worker that dies with the queue a fault killed (no
reconnect, no restart policy) is named in the test's figures and on its timeline,
though the test never looked at it; the fault's own target is not."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from pytest_chaos import wait_for_recovery

pytestmark = [pytest.mark.integration, pytest.mark.root]

STACK = """\
version: "2.4"
services:
  queue:
    image: {image}
    command: ["python3", "-m", "http.server", "8000"]
  worker:
    image: {image}
    # Waits for the queue to answer once (compose starts it first, not once it
    # listens), then gives up for good at the first failed poll: exit 3.
    command:
      - python3
      - -u
      - -c
      - |
        import time, urllib.request
        def poll():
            urllib.request.urlopen("http://queue:8000/", timeout=2).read()
        deadline = time.monotonic() + 60
        while True:
            try:
                poll()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(4)
                time.sleep(0.1)
        print("connected", flush=True)
        while True:
            try:
                poll()
            except OSError:
                raise SystemExit(3)
            time.sleep(0.1)
    depends_on: [queue]
"""

INNER = """
import docker
from pytest_chaos import wait_for_recovery

def test_kill_the_queue(chaos):
    worker = docker.from_env().containers.get(chaos.service("worker").container_id)

    def exited():
        worker.reload()
        return worker.status == "exited"

    chaos.kill("queue")
    wait_for_recovery(exited, timeout=30, interval=0.1, what="the worker giving up")
"""


@pytest.fixture
def project(tmp_path):
    image = os.environ.get("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
    (tmp_path / "docker-compose.yml").write_text(STACK.format(image=image))
    name = f"chaos-collateral-{os.getpid()}"
    compose = ["docker-compose", "-p", name, "-f", str(tmp_path / "docker-compose.yml")]
    subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=120)
    try:

        def connected() -> bool:
            logs = subprocess.run(
                [*compose, "logs", "worker"], capture_output=True, text=True, check=False
            )
            return "connected" in logs.stdout

        wait_for_recovery(connected, timeout=60, interval=0.2, what="the worker's first poll")
        yield name
    finally:
        subprocess.run([*compose, "down", "-t", "0"], check=False, capture_output=True)


def test_a_service_that_died_with_the_target_is_reported(pytester, project, tmp_path):
    pytester.makepyfile(INNER)
    result = pytester.runpytest_subprocess(
        f"--chaos-project={project}", f"--chaos-journal={tmp_path / 'journal'}",
        f"--junitxml={tmp_path / 'junit.xml'}", f"--chaos-report={tmp_path / 'report'}",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    junit = ET.parse(tmp_path / "junit.xml")  # noqa: S314 - the inner run's own file
    figures = {p.get("name"): p.get("value") for p in junit.iter("property")}
    # The worker, not the queue (the kill's own target, restarted by its undo).
    assert figures["collateral"] == "worker: exited (3)"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (test,) = report["tests"]
    drawn = [e["label"] for e in test["timeline"]["events"] if e["kind"] == "collateral"]
    assert drawn == ["worker exited (3)"]
