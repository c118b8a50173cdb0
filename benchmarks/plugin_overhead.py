"""What pytest-chaos costs a project that has it installed and runs no chaos test.

Times a one-test pytest session with the plugin and with ``-p no:chaos``, in
interleaved pairs (A B A B ...), so drift of a shared machine's speed falls on both,
and prints the median of each and the median of the pairwise differences. The target
is at most +30 ms.

    .venv/bin/python benchmarks/plugin_overhead.py [--pairs 20]

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST = "def test_one():\n    assert 1 + 1 == 2\n"


def session(folder: Path, *extra: str) -> float:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, "test_one.py"]
    began = time.perf_counter()
    subprocess.run(argv, cwd=folder, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_one.py").write_text(TEST)
        session(folder)  # warm the file cache for both
        session(folder, "-p", "no:chaos")
        with_plugin, without = [], []
        for _ in range(args.pairs):
            with_plugin.append(session(folder))
            without.append(session(folder, "-p", "no:chaos"))
    diffs = [(a - b) * 1000 for a, b in zip(with_plugin, without, strict=True)]
    print(f"one-test session, {args.pairs} interleaved pairs")
    print(f"  with pytest-chaos   median {statistics.median(with_plugin) * 1000:7.1f} ms")
    print(f"  with -p no:chaos    median {statistics.median(without) * 1000:7.1f} ms")
    print(
        f"  overhead            median {statistics.median(diffs):+7.1f} ms "
        f"(pairs from {min(diffs):+.1f} to {max(diffs):+.1f} ms; target <= +30 ms)"
    )


if __name__ == "__main__":
    main()
