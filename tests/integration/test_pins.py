"""Pins on the real stack: a service's container is asked of Docker once per run of
the container, and asked again as soon as it restarted (its first process is new),
whoever restarted it."""

from __future__ import annotations

import pytest

from pytest_chaos import ComposeProject, kill, wait_for_recovery

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def docker_calls(chaos_project, monkeypatch) -> list[str]:
    """What the project asked Docker, by call."""
    from docker.models.containers import ContainerCollection

    calls: list[str] = []
    for name in ("get", "list"):
        real = getattr(ContainerCollection, name)

        def spy(self, *args, real=real, name=name, **kwargs):
            calls.append(name)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(ContainerCollection, name, spy)
    return calls


def test_a_running_container_is_asked_once(chaos_project: ComposeProject, docker_calls):
    # A project of its own: the session's has pinned its services in earlier tests.
    project = ComposeProject(chaos_project.name)
    redis = project.service("redis")
    assert "list" in docker_calls  # found once, by its labels
    asked = len(docker_calls)
    for _ in range(3):
        assert project.service("redis") is redis
        redis.init_pid()
        redis.restart_policy()
        redis.restart_count()
        redis.address()
    assert len(docker_calls) == asked


def test_a_container_restarted_by_docker_is_asked_again(chaos_project, docker_calls):
    redis = chaos_project.service("redis")
    first = redis.init_pid()
    redis.container().restart(timeout=0)  # not through pytest-chaos
    docker_calls.clear()
    wait_for_recovery(redis.is_healthy, timeout=60, what="redis to restart")
    assert redis.init_pid() != first
    assert "get" in docker_calls
    # Asked afresh: Docker starts its restart count again at a manual restart.
    assert redis.restart_count() == 0
    assert chaos_project.service("redis").init_pid() == redis.init_pid()


def test_after_a_kill_the_restart_policys_new_process_is_seen(chaos, chaos_project):
    redis = chaos_project.service("redis")
    count = redis.restart_count()
    with kill(redis, "SIGKILL") as handle:
        pass
    assert handle.restarts >= 1
    assert redis.restart_count() > count
    assert redis.main_pid() != handle.pid
