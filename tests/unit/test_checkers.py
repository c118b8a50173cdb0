import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_chaos import (
    ConfigurationError,
    History,
    HistoryCheckFailed,
    availability,
    conservation,
    set_full,
    unique_ids,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def craft(adds, final, *, reads=()):
    """A history: each add is (element, outcome); then the reads, then the final
    read returning ``final``."""
    history = History(clock=Clock())
    writer, reader = history.client(), history.client()
    for element, outcome in adds:
        writer.invoke("add", element)
        if outcome == "open":
            writer = history.client()  # left open for ever: a crashed client
        else:
            writer.complete(outcome, error=None if outcome == "ok" else "503")
    for seen in (*reads, final):
        reader.invoke("read")
        reader.ok(list(seen))
    return history.events


def test_set_full_passes_when_every_acknowledged_element_is_read_once():
    result = set_full(
        craft([(1, "ok"), (2, "ok"), (3, "info"), (4, "fail"), (5, "open")], [1, 2, 5])
    )
    assert result.valid, result.problems
    assert result.figures == {
        "adds": 5, "acknowledged": 2, "indeterminate": 2, "indeterminate_present": 1,
        "failed": 1, "final_read_size": 3, "lost": 0, "duplicated": 0, "phantom": 0,
        "resurrected": 0,
    }  # fmt: skip
    assert result.raise_if_invalid() is result


def test_set_full_names_a_lost_element_and_when_it_was_first_seen_missing():
    events = craft([(1, "ok"), (2, "ok")], [1], reads=[[1, 2], [1]])
    result = set_full(events)
    assert not result.valid
    assert result.details["lost"] == [2]
    # The second read (invoked at 0.07 s of the crafted clock) is the first without 2.
    assert result.details["first_missing"][2] == pytest.approx(0.07)
    with pytest.raises(HistoryCheckFailed, match=r"1 acknowledged element\(s\) lost: 2 .*"
                       r"first seen missing by the read at 0\.070 s") as raised:  # fmt: skip
        result.raise_if_invalid()
    assert raised.value.result is result
    assert isinstance(raised.value, AssertionError)


def test_set_full_rejects_duplicates_phantoms_and_failed_adds_that_happened():
    result = set_full(craft([(1, "ok"), (2, "info"), (3, "fail")], [1, 2, 2, 3, 9]))
    assert not result.valid
    assert result.figures["duplicated"] == 1
    assert result.figures["phantom"] == 1
    assert result.figures["resurrected"] == 1
    text = "; ".join(result.problems)
    assert "read more than once: 2 (e.g. 2 2 times)" in text
    assert "never added: 9" in text
    assert "whose add had failed (definitely not done): 3" in text


def test_a_retried_element_is_acknowledged_when_its_retry_was():
    """First attempt left open (a crashed client), then unknown, then ok: the element
    counts as acknowledged at the ok, and a read before that is not 'missing' it."""
    history = History(clock=Clock())
    crashed, unsure, retry, reader = (history.client() for _ in range(4))
    crashed.invoke("add", 7)
    unsure.invoke("add", 7)
    unsure.info(error="timeout")
    reader.invoke("read")
    reader.ok([])  # before the retry: 7 may well be absent
    retry.invoke("add", 7)
    retry.ok()
    acked_at = history.events[-1].time
    reader.invoke("read")
    reader.ok([])
    result = set_full(history.events)
    assert result.details["lost"] == [7]
    assert result.details["first_missing"][7] > acked_at
    assert f"acknowledged at {acked_at:.3f} s" in result.problems[0]


def test_an_element_acknowledged_while_the_final_read_ran_may_be_absent():
    history = History(clock=Clock())
    writer, reader = history.client(), history.client()
    writer.invoke("add", 1)
    reader.invoke("read")
    writer.ok()  # acknowledged after the final read began
    reader.ok([])
    result = set_full(history.events)
    assert result.valid, result.problems
    assert result.figures["indeterminate"] == 1


def test_set_full_without_a_final_read_proves_nothing():
    history = History()
    client = history.client()
    client.invoke("add", 1)
    client.ok()
    result = set_full(history.events)
    assert not result.valid
    assert "never read back" in result.counterexample


def test_set_full_lists_ten_and_counts_the_rest():
    result = set_full(craft([(i, "ok") for i in range(25)], []))
    assert "lost: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more" in result.counterexample


@given(
    st.lists(st.sampled_from(["ok", "fail", "info", "open"]), max_size=40),
    st.data(),
)
def test_set_full_is_valid_exactly_when_the_final_read_is_allowed(outcomes, data):
    """Property: a final read holding every acknowledged element once, any subset of
    the unknown ones, and nothing else is valid; dropping an acknowledged element,
    doubling one, or adding a failed or unwritten one is not."""
    adds = list(enumerate(outcomes))
    acked = [e for e, o in adds if o == "ok"]
    unknown = [e for e, o in adds if o in ("info", "open")]
    failed = [e for e, o in adds if o == "fail"]
    present = data.draw(st.lists(st.sampled_from(unknown), unique=True)) if unknown else []
    assert set_full(craft(adds, acked + present)).valid
    spoilers = [("drop", e) for e in acked] + [("double", e) for e in acked + present]
    spoilers += [("add", e) for e in failed] + [("add", 10_000)]
    how, element = data.draw(st.sampled_from(spoilers))
    final = acked + present
    final = [e for e in final if e != element] if how == "drop" else [*final, element]
    assert not set_full(craft(adds, final)).valid


def ids_history(ids):
    history = History(clock=Clock())
    for ident in ids:
        client = history.client()
        client.invoke("place", None)
        if ident == "fail":
            client.fail("503")
        else:
            client.ok(ident)
    return history.events


def test_unique_ids_passes_distinct_ids_and_skips_failures():
    result = unique_ids(ids_history([1, 2, "fail", 3]), f="place")
    assert (result.valid, result.figures) == (True, {"ids": 3, "duplicates": 0})


def test_unique_ids_names_an_id_handed_out_twice_and_to_whom():
    result = unique_ids(ids_history([7, 8, 7]), id_of=lambda value: value)
    assert not result.valid
    assert result.counterexample == (
        "1 id(s) handed out twice: 7 to process 0 at 0.020 s and to process 2 at 0.060 s"
    )


def window_history():
    faults: list[str] = []
    history = History(faults=lambda: faults, clock=Clock())
    plan = [([], "ok"), ([], "ok"), (["kill postgres"], "fail"), (["kill postgres"], "info"),
            (["kill postgres"], "ok"), ([], "ok")]  # fmt: skip
    for state, outcome in plan:
        faults[:] = state
        client = history.client()
        client.invoke("place", None)
        client.complete(outcome, error=None if outcome == "ok" else "gone")
    return history.events


def test_availability_counts_outcomes_per_fault_window():
    result = availability(window_history())
    assert result.valid
    assert result.figures == {
        "before_ok": 2, "before_fail": 0, "before_info": 0, "before_slowest_ok_s": 0.01,
        "during1_faults": "kill postgres",
        "during1_ok": 1, "during1_fail": 1, "during1_info": 1, "during1_slowest_ok_s": 0.01,
        "after_ok": 1, "after_fail": 0, "after_info": 0, "after_slowest_ok_s": 0.01,
    }  # fmt: skip
    assert [w.name for w in result.details["windows"]] == ["before", "kill postgres", "after"]


def test_availability_with_a_bound_on_unknown_outcomes_judges():
    result = availability(window_history(), max_info_share=0.2)
    assert not result.valid
    assert result.counterexample == (
        "1 of 3 operations in the window 'kill postgres' ended with an unknown outcome (33% > 20%)"
    )
    with pytest.raises(ConfigurationError, match="fraction from 0 to 1"):
        availability(window_history(), max_info_share=5)


def test_conservation_runs_every_invariant_and_names_the_first_counterexample():
    result = conservation(
        {"filled": lambda: [], "overfill": lambda: ["order 4: filled 12 of 10", "order 9: 3 of 2"]}
    )
    assert not result.valid
    assert result.figures == {"filled_violations": 0, "overfill_violations": 2}
    assert result.problems == ("overfill: order 4: filled 12 of 10 (and 1 more)",)


def test_results_become_report_properties_named_after_the_checker():
    result = unique_ids(ids_history([1]))
    assert result.properties() == {
        "unique_ids_valid": "true", "unique_ids_ids": 1, "unique_ids_duplicates": 0,
    }  # fmt: skip
