"""Fault schedules: the strategy's bounds and shrinking, the one-line text and its
parser, and the runner's clock (with a fault of the test's own; the real faults on a
real stack are run by tests/schedule)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import find, given, settings

from pytest_chaos import ConfigurationError, Schedule, Step, StepKind, UnknownFault, schedules
from pytest_chaos.chaos import Chaos
from pytest_chaos.registry import fault
from pytest_chaos.schedule import normalize, run

SERVICES = ["postgres", "redis", "trading-api"]
STRATEGY = schedules(SERVICES, kinds=["kill", "pause", "latency", "cpu_quota"], length="6s")


@given(STRATEGY)
def test_a_schedule_keeps_within_its_bounds(schedule):
    assert len(schedule.steps) <= 3
    for step in schedule.steps:
        assert step.service in SERVICES
        assert step.at >= 0
        assert step.end <= 6.0
        assert step.duration >= 0.5
        assert (step.at * 2).is_integer()
        assert (step.duration * 2).is_integer()
    assert [s.at for s in schedule.steps] == sorted(s.at for s in schedule.steps)


@given(STRATEGY)
def test_steps_on_one_service_never_overlap(schedule):
    by_service: dict[str, list[Step]] = {}
    for step in schedule.steps:
        by_service.setdefault(step.service, []).append(step)
    for steps in by_service.values():
        for a, b in itertools.pairwise(steps):
            assert b.at >= a.end, (a, b)


@given(STRATEGY)
def test_the_text_reads_back_as_the_same_schedule(schedule):
    assert Schedule.parse(schedule.text) == schedule


def test_the_text_of_a_schedule():
    schedule = Schedule(
        (
            Step("pause", "postgres", 0.0, 1.5),
            Step("latency", "redis", 0.5, 2.0, (("delay", "200ms"),)),
        )
    )
    assert (
        schedule.text == "pause postgres at 0s for 1.5s; latency redis at 0.5s for 2s delay=200ms"
    )
    assert schedule.describe().splitlines() == [
        "  1. pause postgres at 0s for 1.5s",
        "  2. latency redis at 0.5s for 2s delay=200ms",
    ]
    assert Schedule.parse("nothing") == Schedule()


def test_shrinking_makes_the_smallest_schedule_that_still_matches():
    # The combination of the exchange's weakness, as a predicate: a pause of postgres
    # long enough, and redis killed no earlier than it began.
    def breaks(schedule: Schedule) -> bool:
        pauses = [s for s in schedule.steps if s.kind == "pause" and s.service == "postgres"]
        kills = [s for s in schedule.steps if s.kind == "kill" and s.service == "redis"]
        return any(p.duration >= 1.5 and k.at >= p.at for p in pauses for k in kills)

    found = find(
        STRATEGY,
        breaks,
        settings=settings(max_examples=2000, database=None),
    )
    assert found.text == "kill redis at 0s for 0.5s; pause postgres at 0s for 1.5s"


def test_normalize_moves_a_step_after_the_one_holding_its_service_and_drops_past_the_end():
    steps = [
        Step("pause", "redis", 1.0, 2.0),
        Step("kill", "redis", 2.0, 1.0),
        Step("kill", "redis", 2.5, 1.0),
    ]
    schedule = normalize(steps, length=4.0)
    assert schedule.text == "pause redis at 1s for 2s; kill redis at 3s for 1s"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: schedules([]), "services must be a non-empty list"),
        (lambda: schedules("redis"), "services must be a non-empty list"),
        (lambda: schedules(["redis"], kinds=[]), "kinds must be a non-empty list"),
        (lambda: schedules(["redis"], max_steps=0), "max_steps must be a whole number"),
        (lambda: schedules(["redis"], length="1s", resolution="2s"), "cannot hold a step"),
        (lambda: schedules(["redis"], length="-1s"), "length"),
        (lambda: schedules(["redis"], kinds=[StepKind("loss", {"percent": ()})]), "no value"),
        (lambda: Schedule.parse("pause postgres for 2s"), "cannot read the schedule step"),
        (lambda: Schedule.parse("pause postgres at 1s for 2s; oops"), "'oops'"),
    ],
)
def test_bad_input_is_one_clear_sentence(call, message):
    with pytest.raises(ConfigurationError, match=message):
        call()


def test_an_unknown_kind_names_the_faults_there_are():
    with pytest.raises(UnknownFault, match=r"the faults there are: .*partition"):
        schedules(["redis"], kinds=["explode"])


# -- the runner, with a fault of this test's own -------------------------------------------

EVENTS: list[tuple[str, str, float]] = []


@fault("schedule_probe")
def _probe(chaos: Any, service: str, *, level: int = 1) -> contextlib.AbstractContextManager[str]:
    @contextlib.contextmanager
    def held() -> Iterator[str]:
        EVENTS.append(("apply", f"{service}/{level}", NOW[0]))
        yield f"probe {service}"
        EVENTS.append(("undo", f"{service}/{level}", NOW[0]))

    return held()


NOW = [0.0]


def _chaos() -> Chaos:
    return Chaos(lambda: pytest.fail("no project"), timeout=60.0, record=lambda n, v: None)


def test_the_runner_applies_each_step_at_its_offset_and_undoes_it_after_its_duration():
    EVENTS.clear()
    NOW[0] = 0.0

    def sleep(seconds: float) -> None:
        NOW[0] += seconds

    schedule = Schedule.parse(
        "schedule_probe a at 0s for 1s level=2; schedule_probe b at 0.5s for 1.5s; "
        "schedule_probe a at 1s for 0.5s"
    )
    done = run(_chaos(), schedule, sleep=sleep, clock=lambda: NOW[0])
    assert EVENTS == [
        ("apply", "a/2", 0.0),
        ("apply", "b/1", 0.5),
        ("undo", "a/2", 1.0),  # at the same instant, the undo comes first
        ("apply", "a/1", 1.0),
        ("undo", "a/1", 1.5),
        ("undo", "b/1", 2.0),
    ]
    assert [(r.applied_s, r.undone_s) for r in done.steps] == [(0.0, 1.0), (0.5, 2.0), (1.0, 1.5)]
    assert done.lateness() == 0.0


def test_the_runner_checks_every_kind_before_applying_any():
    EVENTS.clear()
    with pytest.raises(UnknownFault):
        run(_chaos(), Schedule.parse("schedule_probe a at 0s for 1s; explode b at 1s for 1s"))
    assert EVENTS == []


def test_a_step_kind_of_your_own_draws_its_parameters_mildest_first():
    kind = StepKind("schedule_probe", {"level": (1, 2, 3)})
    strategy = schedules(["a"], kinds=[kind], max_steps=1)
    found = find(
        strategy,
        lambda s: bool(s.steps) and dict(s.steps[0].params)["level"] >= 2,
        settings=settings(database=None),
    )
    assert found.text == "schedule_probe a at 0s for 0.5s level=2"


def test_the_shrink_budget_replaces_hypothesis_own_limit_and_restores_it():
    from hypothesis.internal.conjecture import engine

    from pytest_chaos.search import _shrink_limit

    before = engine.MAX_SHRINKING_SECONDS
    with _shrink_limit(600.0):
        assert engine.MAX_SHRINKING_SECONDS == 660
    with _shrink_limit(None):
        assert engine.MAX_SHRINKING_SECONDS >= 10**9
    assert before == engine.MAX_SHRINKING_SECONDS


def test_schedules_without_hypothesis_say_which_extra_to_install():
    """A documented install without the schedules extra: one sentence, no traceback
    from inside the plugin (Hypothesis hidden from a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import pytest_chaos\n"
        "from pytest_chaos import EnvironmentProblem\n"
        "try:\n"
        "    pytest_chaos.schedules(['web'])\n"
        "except EnvironmentProblem as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == (
        "pytest_chaos.schedules needs Hypothesis, which is not installed: pip install "
        "'pytest-chaos[schedules]'."
    ), done.stderr
