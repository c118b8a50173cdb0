"""Collateral damage read from Docker's events, against generated event streams whose
answer is known: the faults' targets are never listed, a container's first start is
not damage, a start after it died is a restart, and every exit, OOM kill and turn to
unhealthy of any other service is listed, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos.observe.collateral import damage_from

LABEL = "com.docker.compose.service"


def event(t, service, action, **attributes):
    return {
        "Action": action,
        "timeNano": int(t * 1e9),
        "Actor": {"Attributes": {LABEL: service, **attributes}},
    }


def test_a_worker_that_died_with_the_queue_is_listed_and_the_queue_is_not():
    events = [
        event(1.0, "queue", "kill"),
        event(1.0, "queue", "die", exitCode="137"),
        event(1.4, "worker", "die", exitCode="3"),
        event(1.5, "queue", "start"),
        event(2.0, "db", "health_status: healthy"),
    ]
    (damage,) = damage_from(events, ["queue"], LABEL)
    assert damage.describe() == "worker: exited (3)"


def test_a_task_target_spares_its_service_and_restarts_are_counted():
    events = [
        event(1.0, "api", "die", exitCode="137"),
        event(1.1, "cache", "oom"),
        event(1.2, "cache", "die", exitCode="137"),
        event(1.3, "cache", "start"),
        event(1.4, "cache", "health_status: unhealthy"),
        event(1.5, "cache", "die", exitCode="1"),
        event(1.6, "cache", "start"),
    ]
    (damage,) = damage_from(events, ["api.2", "web@node1"], LABEL)
    assert damage.describe() == (
        "cache: OOM-killed, exited (137), started again x2, unhealthy, exited (1)"
    )


ACTIONS = ["die", "oom", "start", "health_status: unhealthy", "health_status: healthy",
           "kill", "pause", "exec_create: sh"]  # fmt: skip
SERVICES = ["a", "b", "c", "d"]


@given(
    stream=st.lists(st.tuples(st.sampled_from(SERVICES), st.sampled_from(ACTIONS)), max_size=40),
    targets=st.sets(st.sampled_from(SERVICES)),
)
def test_damage_is_exactly_the_harm_of_the_services_not_aimed_at(stream, targets):
    events = [event(i, service, action) for i, (service, action) in enumerate(stream)]
    found = {d.service: [what for _, what in d.events] for d in damage_from(events, targets, LABEL)}
    expected: dict[str, list[str]] = {}
    for service in SERVICES:
        if service in targets:
            continue
        died, seen = False, []
        for s, action in stream:
            if s != service:
                continue
            if action == "die":
                died = True
                seen.append("exited")
            elif action == "oom":
                seen.append("OOM-killed")
            elif action == "health_status: unhealthy":
                seen.append("unhealthy")
            elif action == "start" and died:
                seen.append("started again")
        if seen:
            expected[service] = seen
    assert found == expected
