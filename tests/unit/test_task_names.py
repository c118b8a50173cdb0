"""Task names: ``web.2`` splits into the service and its number, and a fault given
``web.*`` becomes one call per task, with every other argument kept."""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import pytest

from pytest_chaos.registry import _every_task
from pytest_chaos.targets.compose import split_task

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("web.2", ("web", 2)),
        ("web", ("web", None)),
        ("my.web.10", ("my.web", 10)),
        ("web.x", ("web.x", None)),
        (".2", (".2", None)),
        ("web.", ("web.", None)),
    ],
)
def test_a_task_name_splits_into_service_and_number(name, split):
    assert split_task(name) == split


class _Project:
    def task_names(self, name):
        return [f"{name}.1", f"{name}.2"]


class _Session:
    project = _Project()

    def inject(self, fault, *, label=None):
        return fault


def _fault(chaos, service, signal="SIGKILL", *, timeout=None):
    return nullcontext((service, signal, timeout))


def test_every_task_is_one_call_per_task_with_the_other_arguments_kept():
    calls = _every_task(inspect.signature(_fault), _Session(), ("web.*", "SIGTERM"), {"timeout": 5})
    assert [(c.arguments["service"], c.arguments["signal"]) for c in calls] == [
        ("web.1", "SIGTERM"),
        ("web.2", "SIGTERM"),
    ]
    assert all(c.kwargs == {"timeout": 5} for c in calls)


@pytest.mark.parametrize("service", ["web", "web.2", "web*", 3])
def test_anything_but_every_task_is_one_call(service):
    assert _every_task(inspect.signature(_fault), _Session(), (service,), {}) is None


def test_a_fault_without_a_service_argument_is_one_call():
    def node_fault(chaos, node):
        return nullcontext(node)

    assert _every_task(inspect.signature(node_fault), _Session(), ("node.*",), {}) is None
