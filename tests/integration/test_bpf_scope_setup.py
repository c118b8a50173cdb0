"""The pid-namespace-scoped programs (pages, block I/O, run queue) are attached before
the session fills in which namespaces to watch. A thread that ran in that gap must
not be judged "not watched" for good: CI once saw the page probe count 4.6 MB while
the API's cgroup grew 41.9 MB (it counts 1.7x the growth otherwise), the API's main
thread having allocated in the gap. Here a single-threaded process allocates before
and after its namespace is set, against the program itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_chaos import wait_for_recovery
from pytest_chaos.observe.bpf import _pid_max, _tracepoint_flags
from pytest_chaos.observe.kernel import bpf_support, program_source

pytestmark = [pytest.mark.root, pytest.mark.slow]

SUPPORT = bpf_support()
ALLOCATE = (
    "import mmap, time\n"
    "end = time.monotonic() + 60\n"
    "while time.monotonic() < end:\n"
    "    block = mmap.mmap(-1, 4 << 20)  # fresh pages each time, faulted in below\n"
    "    block.write(bytes(4 << 20))\n"
    "    block.close()\n"
    "    time.sleep(0.005)\n"
)


@pytest.mark.skipif(not SUPPORT.available, reason=f"BPF unavailable: {SUPPORT.reason}")
def test_a_thread_that_ran_before_the_scope_was_set_is_counted_once_it_is():
    from bcc import BPF

    if SUPPORT.kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = SUPPORT.kernel_source
    flags = [*_tracepoint_flags(), f"-DCHAOS_PID_MAX={_pid_max()}"]
    bpf = BPF(src_file=str(program_source("page_alloc.c")).encode(), cflags=flags)
    # In a pid namespace of its own, one thread allocating all along.
    proc = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", ALLOCATE])
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        wait_for_recovery(
            lambda: children.read_text().split(), timeout=10, interval=0.01,
            what="the process in its own pid namespace", on_timeline=False,
        )  # fmt: skip
        child = int(children.read_text().split()[0])
        # It allocates while the program runs with no namespace set: the gap.
        time.sleep(0.5)  # the gap's length: long enough for many allocations
        st = os.stat(f"/proc/{child}/ns/pid")
        table = bpf[b"pid_namespaces"]
        table[table.Key(0)] = table.Leaf(st.st_dev, st.st_ino)
        pages = bpf[b"pages"]
        counted = wait_for_recovery(
            lambda: pages[pages.Key(0)].value > 1000, timeout=10, interval=0.05,
            what="its allocations counted once its namespace is set", on_timeline=False,
        )  # fmt: skip
        assert counted.checks >= 1
    finally:
        proc.kill()
        proc.wait()
        bpf.cleanup()
