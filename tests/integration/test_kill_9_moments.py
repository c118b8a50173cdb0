"""pytest killed with SIGKILL at the moments where a crash used to leak: the instant a
fault's journal entry is durable (nothing applied yet), just after a process of ours
started, while the fault is in force, and in the middle of its undo. After
``--chaos-cleanup`` the whole stack must be exactly as before (stack_snapshot), and
the cleanup must say what happened, not what it looks like."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONTENTION = 'chaos.io_contention("postgres", workers=1, bytes_per_worker="8m")'
LATENCY = 'chaos.latency("trading-api", "50ms", peers=["postgres"], method="nfqueue")'
PARTITION = 'chaos.partition("trading-api", ["redis"])'

CASES = {
    "contention-entry": (CONTENTION, "entry", "*stress-ng was never started: nothing to undo"),
    "contention-started": (CONTENTION, "started", "*stopped * stress-ng process(es)*"),
    "contention-in-force": (CONTENTION, "in-force", "*stopped * stress-ng process(es)*"),
    "contention-undo": (CONTENTION, "undo", "*no stress-ng was running; removed cgroup*"),
    "latency-entry": (LATENCY, "entry", "*the fault was never applied: nothing to undo"),
    # Its order taken, the delayer outlives its pytest (its delay is in force) until
    # the undo stops it by the pid and start time the entry holds.
    "latency-started": (LATENCY, "started", "*stopped the delayer (pid *)"),
    "latency-in-force": (LATENCY, "in-force", "*removed the empty mangle table it made*"),
    "latency-undo": (LATENCY, "undo", "*removed the empty mangle table it made"),
    "partition-entry": (PARTITION, "entry", "*the table was never created: nothing to undo"),
    "partition-in-force": (PARTITION, "in-force", "*removed nft table*"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_at_each_moment_then_cleanup_leaves_the_stack_as_before(kill_9_during, case):
    call, moment, said = CASES[case]
    killed = kill_9_during(call, moment=moment)
    result = killed.cleanup()
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"pytest-chaos: undid *{said.lstrip('*')}"])
    killed.assert_as_before()
    again = killed.cleanup()
    again.stdout.fnmatch_lines(["pytest-chaos: nothing to undo in *"])


def test_a_half_written_entry_is_removed_by_the_cleanup_and_said(kill_9_during, tmp_path):
    killed = kill_9_during(PARTITION, moment="entry")
    journal = tmp_path / "journal"
    (journal / "deadbeef-1-0001.json.999999999.tmp").write_text('{"kind": "nft-ta')
    result = killed.cleanup()
    result.stdout.fnmatch_lines(
        ["pytest-chaos: removed 1 half-written journal file(s)*deadbeef-1-0001.json.999999999.tmp"]
    )
    assert list(journal.glob("*.tmp")) == []
    killed.assert_as_before()
