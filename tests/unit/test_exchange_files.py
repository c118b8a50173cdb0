"""Checks on the bundled exchange's build files."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "exchange").glob("*/Dockerfile"))


def test_every_service_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"api", "postgres", "redis", "nginx"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_packages_are_in_the_local_base_image(dockerfile):
    """A machine without a registry builds every image from the local base image with
    no download: that holds only if the base already has each package."""
    base = {
        line.strip()
        for line in (ROOT / "exchange" / "base-packages").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    match = re.search(r'^ARG PACKAGES="([^"]+)"', dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile} declares no ARG PACKAGES"
    assert set(match.group(1).split()) <= base


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_image_runs_an_init_as_pid_1(dockerfile):
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"' in dockerfile.read_text()


def _load_backoff():
    path = ROOT / "exchange" / "api" / "exchange_api" / "backoff.py"
    spec = importlib.util.spec_from_file_location("exchange_backoff", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_reconnect_backoff_grows_exponentially_to_its_cap_with_jitter():
    import random

    backoff = _load_backoff().Backoff(base=0.2, cap=5.0, jitter=0.5, _rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    for n, delay in enumerate(delays):
        ceiling = min(5.0, 0.2 * 2**n)
        assert ceiling * 0.5 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered: no two clients retry in step
    backoff.reset()
    assert backoff.next_delay() <= 0.2


def test_health_counts_only_probes_after_a_given_time():
    from pytest_chaos.targets.compose import _is_healthy
    from pytest_chaos.targets.engine import docker_timestamp as _timestamp

    def attrs(start, code=0):
        log = [{"Start": start, "ExitCode": code}]
        return {"State": {"Running": True, "Health": {"Status": "healthy", "Log": log}}}

    after = _timestamp("2026-11-27T17:15:20.5Z")
    assert _timestamp("2026-11-27T17:15:20.927123456Z") - after == pytest.approx(0.427123)
    assert _is_healthy(attrs("2026-11-27T17:15:20.1Z"))  # no time given: Docker's word
    assert not _is_healthy(attrs("2026-11-27T17:15:20.1Z"), after)  # probe before
    assert _is_healthy(attrs("2026-11-27T17:15:21.000000001Z"), after)
    assert not _is_healthy(attrs("2026-11-27T17:15:21Z", code=1), after)
