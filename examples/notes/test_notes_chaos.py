"""Chaos experiments against the notes service, written only against pytest-chaos's
public API. Run them as root: ``sudo .venv/bin/pytest`` in this folder.

Each measuring window and dwell below is a sleep because it *is* the experiment's
time under (or before) the fault; readiness is always polled with a deadline.
"""

from __future__ import annotations

import statistics
import time

import pytest

from pytest_chaos import (
    DataLossDetected,
    LoadGenerator,
    RequestRecord,
    ScheduleFailed,
    check_no_data_loss,
    schedules,
    wait_for_recovery,
)

# Every experiment here holds on compose and on a swarm (`--chaos-backend swarm`
# deploys docker-stack.yml on a local three-node swarm): the same test code.
pytestmark = pytest.mark.chaos_backends("compose", "swarm")

RECOVERY_LIMIT_S = 60.0
STORE_DEADLINE_S = 1.0  # the service's own deadline on every call to its store


def p50(records: list[RequestRecord]) -> float:
    return statistics.median(r.latency_s for r in records)


def steady(notes) -> None:
    wait_for_recovery(notes.ready, timeout=RECOVERY_LIMIT_S, what="the notes service's health")


def check_no_notes_lost(chaos, notes, load: LoadGenerator) -> None:
    """Every note the service acknowledged (201) is still there; both counts recorded."""
    acknowledged = load.acknowledged("writes")
    chaos.record("notes_acknowledged", len(acknowledged))
    try:
        check_no_data_loss(acknowledged, notes.lookup, what="acknowledged notes")
    except DataLossDetected as exc:
        chaos.record("notes_lost", exc.report.lost_count)
        raise
    chaos.record("notes_lost", 0)


@pytest.mark.experiment("web-crash")
@pytest.mark.root
def test_a_crash_of_the_web_service_is_healed_by_its_restart_policy(chaos, notes):
    steady(notes)
    with LoadGenerator([notes.writes(20)], request_timeout=5.0) as load:
        load.wait_for_records("writes", 20)
        killed = chaos.kill("web")  # SIGKILL of its main process: a crash
        recovery = wait_for_recovery(
            notes.ready, since=killed.applied_at, timeout=RECOVERY_LIMIT_S, interval=0.05,
            what="the notes service after its crash",
        )  # fmt: skip
        back = time.monotonic()
        wait_for_recovery(
            lambda: len(load.records("writes", since=back)) >= 20,
            timeout=30, what="20 writes after the recovery",
        )  # fmt: skip
    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3), key=True)
    after = load.records("writes", since=back)
    assert all(r.ok for r in after), f"writes still fail after recovery: {after[:3]}"
    check_no_notes_lost(chaos, notes, load)


@pytest.mark.experiment("store-partition")
@pytest.mark.network
@pytest.mark.bpf
@pytest.mark.root
def test_a_partition_from_the_store_gives_clear_errors_within_the_deadline(chaos, notes, bpf):
    steady(notes)
    with LoadGenerator([notes.writes(20)], request_timeout=5.0) as load:
        load.wait_for_records("writes", 20)
        with bpf.watch("web", probes=("connect",)) as probes:
            if not probes.support.available:
                pytest.skip(f"the reconnects are counted by BPF: {probes.support.reason}")
            cut = chaos.partition("web", ["store"], mode="reject")
            time.sleep(4.0)  # the fault's dwell
            lifting = time.monotonic()
            chaos.undo(cut)
        recovery = wait_for_recovery(
            notes.ready, since=cut.undone_at, timeout=RECOVERY_LIMIT_S, interval=0.05,
            what="the notes service after the partition healed",
        )  # fmt: skip
    during = load.records("writes", since=cut.applied_at, until=cut.undone_at)
    failed = [r for r in during if not r.ok]
    attempts = [
        a
        for a in probes.observation.attempts_to(6379)
        if cut.applied_at <= a.started < lifting  # the undo lets new ones through
    ]
    chaos.record("writes_refused_during_partition", len(failed))
    chaos.record("slowest_write_during_partition_s", round(max(r.latency_s for r in during), 3))
    chaos.record("bpf_store_reconnects_during_partition", len(attempts), key=True)
    chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3))
    assert failed, "no write failed while the service was cut off from its store"
    assert {r.status for r in failed} == {503}, f"unclear errors: {failed[:3]}"
    # Within the store deadline: the slowest write took 1.009-1.020 s over 13 runs here
    # (a reconnect that waits out its 1 s connect timeout); bound with margin for a
    # loaded machine, far below a hang.
    assert max(r.latency_s for r in during) < 2 * STORE_DEADLINE_S + 1.0
    # The service keeps trying its store (BPF counted 80-81 attempts in 4 s, 10 runs), and
    # none gets through while the partition is in force.
    assert attempts, "BPF saw no reconnect to the store during the partition"
    assert not [a for a in attempts if a.outcome == "established"], attempts
    check_no_notes_lost(chaos, notes, load)


@pytest.mark.experiment("store-latency")
@pytest.mark.network
@pytest.mark.root
def test_latency_to_the_store_slows_reads_but_none_fail(chaos, notes, note_id):
    steady(notes)
    delay_s = 0.1
    with LoadGenerator([notes.reads(note_id, 20)], request_timeout=5.0) as load:
        load.wait_for_records("reads", 20)
        base_from = time.monotonic()
        time.sleep(2.0)  # the baseline's measuring window
        slowed = chaos.latency("web", f"{delay_s * 1000:.0f}ms", peers=["store"])
        time.sleep(3.0)  # the fault's dwell
        chaos.undo(slowed)
        wait_for_recovery(
            lambda: p50(load.records("reads", since=time.monotonic() - 1.0)) < delay_s / 2,
            since=slowed.undone_at, timeout=30, what="read latency back to its baseline",
        )  # fmt: skip
    base = load.records("reads", since=base_from, until=slowed.applied_at)
    during = load.records("reads", since=slowed.applied_at + 0.2, until=slowed.undone_at)
    added = p50(during) - p50(base)
    chaos.record("read_p50_before_ms", round(p50(base) * 1000, 1))
    chaos.record("read_p50_during_ms", round(p50(during) * 1000, 1))
    chaos.record("added_latency_ms", round(added * 1000, 1), key=True)
    assert all(r.ok for r in load.records()), "a read failed under 100 ms of added latency"
    # One round trip to the store per read: about the injected delay is added
    # (measured +100.3 to +101.0 ms over 10 runs here, on the NFQUEUE path).
    assert delay_s * 0.8 <= added <= delay_s * 2, f"added {added * 1000:.0f} ms"


@pytest.mark.experiment("store-disorder")
@pytest.mark.network
@pytest.mark.root
def test_packets_disordered_on_the_way_to_the_store_fail_and_lose_nothing(chaos, notes):
    """A quarter of what the service sends its store is held back 100 ms (later packets
    overtake it) and a tenth is sent twice: TCP puts it right, within the deadline."""
    steady(notes)
    with LoadGenerator([notes.writes(20)], request_timeout=5.0) as load:
        load.wait_for_records("writes", 20)
        shuffled = chaos.disorder("web", ["store"], reorder=25, duplicate=10, gap="100ms")
        time.sleep(4.0)  # the fault's dwell
        chaos.undo(shuffled)
    during = load.records("writes", since=shuffled.applied_at, until=shuffled.lifted_at)
    failed = [r for r in during if not r.ok]
    slowest = max(r.latency_s for r in during)
    chaos.record("writes_during_disorder", len(during))
    chaos.record("writes_failed_during_disorder", len(failed), key=True)
    chaos.record("slowest_write_during_disorder_s", round(slowest, 3))
    assert during, "no write was made while the packets were disordered"
    assert not failed, f"{len(failed)} of {len(during)} writes failed: {failed[:3]}"
    # A write held back waits the 100 ms gap: the slowest took 0.106-0.211 s over 3 runs
    # here, far inside the service's 1 s deadline (with the deadline at 50 ms, 13-22 of
    # 81 writes failed in each of 3 runs: scripts/check-wheel checks that it fails).
    assert slowest < STORE_DEADLINE_S, f"a write took {slowest:.3f} s"
    check_no_notes_lost(chaos, notes, load)


@pytest.mark.experiment("web-cpu")
@pytest.mark.resources
@pytest.mark.root
def test_a_cpu_quota_slows_digests_but_none_fail(chaos, notes, note_id):
    steady(notes)
    web = chaos.service("web")
    flow = notes.reads(note_id, 20, digest=True)
    with LoadGenerator([flow], request_timeout=10.0, max_in_flight=4) as load:
        load.wait_for_records("digests", 20)
        base_from, cpu_from = time.monotonic(), web.cpu_seconds()
        time.sleep(3.0)  # the baseline's measuring window
        base_until, cpu_until = time.monotonic(), web.cpu_seconds()
        used = (cpu_until - cpu_from) / (base_until - base_from)
        # Half of what it used: the fault bites on a fast CPU and on a slow one.
        quota = chaos.cpu_quota("web", round(max(0.05, used / 2), 2))
        time.sleep(4.0)  # the fault's dwell
        chaos.undo(quota)
    base = load.records("digests", since=base_from, until=base_until)
    during = load.records("digests", since=quota.applied_at + 0.5, until=quota.undone_at)
    factor = p50(during) / p50(base)
    chaos.record("cpu_used_before", round(used, 3))
    chaos.record("cpu_quota", quota.cpus)
    chaos.record("digest_p50_factor", round(factor, 2), key=True)
    assert all(r.ok for r in load.records()), "a digest failed while the CPU was capped"
    # Measured x14 to x44 over 10 runs here at half the CPU it used (0.17-0.22 CPU
    # before); the bound leaves wide margin.
    assert factor >= 3.0, f"digests only x{factor:.2f} slower at half the CPU they used"


@pytest.mark.experiment("store-crash")
@pytest.mark.store
@pytest.mark.root
@pytest.mark.xfail(
    strict=True,
    raises=DataLossDetected,
    reason="the weakness this example ships with: Redis runs without persistence, so a "
    "crash of the store loses every acknowledged note",
)
def test_a_crash_of_the_store_keeps_every_acknowledged_note(chaos, notes):
    steady(notes)
    with LoadGenerator([notes.writes(20)], request_timeout=5.0) as load:
        load.wait_for_records("writes", 20)
        killed = chaos.kill("store")
        recovery = wait_for_recovery(
            notes.ready, since=killed.applied_at, timeout=RECOVERY_LIMIT_S, interval=0.05,
            what="the notes service after its store crashed",
        )  # fmt: skip
        chaos.record("recovery_time_s", round(recovery.recovery_time_s, 3))
    check_no_notes_lost(chaos, notes, load)


@pytest.mark.schedule
@pytest.mark.root
def test_a_schedule_search_finds_the_store_crash_and_nothing_else(chaos, notes):
    """Faults drawn on both services, several at a time: the search must come back
    with the smallest schedule that loses notes, the store's crash alone (the
    weakness above), however it was first found."""

    def example(schedule):
        with LoadGenerator([notes.writes(20)], request_timeout=5.0) as load:
            load.wait_for_records("writes", 5)
            chaos.run_schedule(schedule)
        steady(notes)
        check_no_notes_lost(chaos, notes, load)

    strategy = schedules(
        ["web", "store"], kinds=["kill", "pause"], max_steps=2, length="2s", resolution="0.5s"
    )
    with pytest.raises(ScheduleFailed) as found:
        chaos.explore(strategy, example, steady=notes.ready, max_examples=10, seed=1, database=None)
    assert found.value.schedule is not None
    assert found.value.schedule.text == "kill store at 0s for 0.5s"
    assert "acknowledged notes" in str(found.value)
