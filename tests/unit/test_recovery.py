import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import ConfigurationError, RecoveryTimeout, wait_for_recovery


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_measures_recovery_from_the_fault_not_from_the_call():
    clock = FakeClock()
    results = iter([False, False, True])
    recovery = wait_for_recovery(
        lambda: next(results), since=95.0, interval=0.5, clock=clock, sleep=clock.sleep
    )
    assert recovery.recovery_time_s == pytest.approx(6.0)
    assert recovery.waited_s == pytest.approx(1.0)
    assert recovery.checks == 3


def test_transient_exceptions_count_as_failed_checks():
    clock = FakeClock()
    calls = iter([ConnectionError("refused"), True])

    def check():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert wait_for_recovery(check, clock=clock, sleep=clock.sleep).checks == 2


def test_timeout_says_what_was_last_seen():
    clock = FakeClock()

    def check():
        raise ConnectionError("connection refused")

    with pytest.raises(
        RecoveryTimeout,
        match=r"order flow did not return within 3 s .*ConnectionError: connection refused",
    ):
        wait_for_recovery(check, timeout=3, what="order flow", clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(103.0)


def test_timeout_is_a_timeout_error():
    clock = FakeClock()
    with pytest.raises(TimeoutError):
        wait_for_recovery(lambda: 0, timeout="1s", clock=clock, sleep=clock.sleep)


def test_deadline_counts_from_since():
    clock = FakeClock()
    with pytest.raises(RecoveryTimeout):
        wait_for_recovery(lambda: False, since=40.0, timeout=60, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(100.0)  # already past since + timeout: one check only


def test_unexpected_exceptions_propagate():
    def check():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_for_recovery(check, transient=(ConnectionError,))


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"interval": "-1s"}, {"since": 1e12}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigurationError):
        wait_for_recovery(lambda: True, **kwargs)


def test_since_a_handle_measures_from_when_the_fault_was_lifted_not_from_its_undo():
    """A 3 s pause whose undo then waited 2.6 s for the target's health: the system
    answered 0.05 s after the thaw, and that is its recovery."""
    from pytest_chaos import FaultHandle

    clock = FakeClock()
    handle = FaultHandle(kind="pause", target="db", applied_at=90.0)
    handle.lifted_at, handle.undone_at = 93.0, 95.6
    clock.now = 93.05
    recovery = wait_for_recovery(lambda: True, since=handle, clock=clock, sleep=clock.sleep)
    assert recovery.recovery_time_s == pytest.approx(0.05)


def test_since_a_fault_still_in_force_is_refused():
    from pytest_chaos import FaultHandle

    with pytest.raises(ConfigurationError, match="still in force"):
        wait_for_recovery(lambda: True, since=FaultHandle(kind="pause", target="db"))


class Checks:
    """A check whose n-th call takes ``durations[n]`` of the fake clock's time and
    gives ``outcomes[n]`` (True, False, or raises); then False for ever."""

    def __init__(self, clock, durations, outcomes):
        self.clock, self.durations, self.outcomes = clock, durations, outcomes
        self.started: list[float] = []
        self.ended: list[float] = []

    def __call__(self):
        n = len(self.started)
        self.started.append(self.clock.now)
        self.clock.now += self.durations[n % len(self.durations)]
        self.ended.append(self.clock.now)
        outcome = self.outcomes[n] if n < len(self.outcomes) else False
        if outcome == "raise":
            raise ConnectionError("refused")
        return outcome


@given(
    before=st.floats(0, 5),
    timeout=st.floats(0.1, 10),
    interval=st.floats(0.01, 1),
    durations=st.lists(st.floats(0, 2), min_size=1, max_size=5),
    outcomes=st.lists(st.sampled_from([True, False, "raise"]), max_size=200),
)
def test_the_recovery_is_the_first_passing_check_measured_from_since(
    before, timeout, interval, durations, outcomes
):
    """Against checks of any speed and outcome: a recovery is reported at the end of
    the first check that passed, measured from ``since``; a timeout only when no check
    passed and the deadline is past; after the first check (made even when ``since``
    is already older than the timeout), no check starts after the deadline."""
    clock = FakeClock()
    since = clock.now - before
    checks = Checks(clock, durations, outcomes)
    try:
        found = wait_for_recovery(
            checks, since=since, timeout=timeout, interval=interval,
            clock=clock, sleep=clock.sleep, on_timeline=False,
        )  # fmt: skip
    except RecoveryTimeout:
        assert True not in outcomes[: len(checks.started)]
        assert checks.ended[-1] >= since + timeout
        assert all(t <= since + timeout for t in checks.started[1:])
        return
    first = outcomes.index(True)
    assert found.checks == first + 1 == len(checks.started)
    assert found.recovery_time_s == pytest.approx(checks.ended[first] - since)
    assert found.recovery_time_s - found.waited_s == pytest.approx(before)
    assert all(t < since + timeout for t in checks.ended[:first])
