"""Are the verdicts stable? Runs the experiments N times on an idle machine and N
times beside a CPU hog on every core (``stress-ng --cpu 0``), and prints, for each
experiment, its verdicts in each condition and the spread of its key figure and of
its recovery time. With ``--weakened``, the weakened runs too (each experiment
against an exchange with one weakness switched on, which must fail for that reason).

    sudo .venv/bin/python benchmarks/stability.py [--runs 10] [--conditions idle,loaded]
        [--weakened | --suites experiments,weakened,notes] [-k EXPR] [--keep DIR] [--markdown]
        [--chaos-backend compose|swarm]

With ``--chaos-backend swarm`` each run deploys the exchange on a local three-node
swarm and runs the experiments marked for it (the weakened runs are compose's).
``--suites notes`` runs examples/notes instead, a stack that is not the exchange
(with swarm: its own stack file, docker-stack.yml, on a swarm of its own each run).

Each run is a pytest of its own (its own stack). It prints figures; it asserts
nothing. The target is N of N identical verdicts in both conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each suite: the folder pytest runs in, and what it runs there.
SUITES = {
    "experiments": (ROOT, "tests/experiments"),
    "weakened": (ROOT, "tests/weakened"),
    "notes": (ROOT / "examples" / "notes", "."),
}
RECOVERY_FIGURES = ("recovery_time_s", "outage_s", "back_to_baseline_s")


@dataclass
class Case:
    verdicts: Counter[str] = field(default_factory=Counter)
    key: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    recovery: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def condition(name: str) -> Iterator[None]:
    """``loaded``: a stress-ng CPU hog on every core, ours, stopped by its own pid."""
    if name == "idle":
        yield
        return
    stress = shutil.which("stress-ng")
    if stress is None:
        sys.exit("stress-ng is not installed: apt-get install stress-ng")
    hog = subprocess.Popen(
        [stress, "--cpu", "0", "--timeout", "3600s", "--quiet"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hog.pid, signal.SIGTERM)
        hog.wait(timeout=30)


def run_pytest(where: Path, target: str, extra: list[str], xml: Path) -> float:
    """One pytest run; its JUnit XML goes to ``xml`` and its output beside it (.log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env.setdefault("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
    began = time.monotonic()
    with xml.with_suffix(".log").open("wb") as log:
        subprocess.run(
            [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", "-q",
             f"--junitxml={xml}", *extra],
            cwd=where, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, check=False, timeout=3600,
        )  # fmt: skip
    return time.monotonic() - began


def build_notes_images() -> None:
    """A stack deploy builds nothing: the notes images are built once, by compose."""
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    env = {**os.environ}
    env.setdefault("CHAOS_BASE_IMAGE", "pytest-chaos/base:bookworm")
    subprocess.run(
        [*compose, "-f", "docker-compose.yml", "build", "-q"],
        cwd=SUITES["notes"][0], env=env, stdin=subprocess.DEVNULL, check=True, timeout=1800,
    )  # fmt: skip


def read_junit(xml: Path, cases: dict[str, Case]) -> None:
    if not xml.exists():
        cases["(no JUnit: the run crashed)"].verdicts["crashed"] += 1
        return
    for case in ET.parse(xml).getroot().iter("testcase"):  # noqa: S314 - our own file
        name = case.get("name", "?")
        found = cases[name]
        verdict, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                reason = (node.get("message") or "").splitlines()[0][:90]
                verdict = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                if reason.startswith("the fault did not take effect"):
                    verdict = "no effect"
        found.verdicts[verdict] += 1
        if reason:
            found.reasons[reason] += 1
        figures = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        key = figures.get("chaos_key_figure")
        if key and _number(figures.get(key)) is not None:
            found.key[key].append(_number(figures[key]))  # type: ignore[arg-type]
        for name_ in RECOVERY_FIGURES:
            value = _number(figures.get(name_))
            if value is not None:
                found.recovery.append(value)
                break


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


def verdicts(case: Case, runs: int) -> str:
    parts = [f"{n}/{runs} {v}" for v, n in case.verdicts.most_common()]
    return ", ".join(parts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--conditions", default="idle,loaded")
    parser.add_argument("--weakened", action="store_true", help="the weakened runs too")
    parser.add_argument(
        "--suites", default="experiments", help="experiments, weakened, notes (comma-separated)"
    )
    parser.add_argument("-k", dest="keyword", help="only the tests pytest -k selects")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--chaos-backend", dest="backend", choices=("compose", "swarm"), default="compose",
        help="where the experiments run (swarm: a local three-node swarm per run)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", type=Path, metavar="DIR",
        help="keep every run's JUnit XML and pytest output in DIR (default: thrown away)",
    )  # fmt: skip
    args = parser.parse_args()
    conditions = args.conditions.split(",")
    chosen = set(args.suites.split(",")) | ({"weakened"} if args.weakened else set())
    unknown = chosen - set(SUITES)
    if unknown:
        sys.exit(f"unknown suite {', '.join(sorted(unknown))}: choose from {', '.join(SUITES)}")
    if args.backend == "swarm" and "weakened" in chosen:
        sys.exit("the weakened runs start their own compose stacks: drop --weakened with swarm")
    suites = [(s, *SUITES[s]) for s in SUITES if s in chosen]
    if args.backend == "swarm" and "notes" in chosen:
        build_notes_images()
    extra = ["-k", args.keyword] if args.keyword else []
    if args.backend == "swarm":
        extra += ["--chaos-backend", "swarm"]
    results: dict[tuple[str, str], dict[str, Case]] = {}
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pytest-chaos-stability-"))
        for suite, where, target in suites:
            for cond in conditions:
                cases: dict[str, Case] = defaultdict(Case)
                for i in range(args.runs):
                    xml = Path(tmp) / f"{suite}-{cond}-{i}.xml"
                    with condition(cond):
                        took = run_pytest(where, target, extra, xml)
                    read_junit(xml, cases)
                    done = sum(sum(c.verdicts.values()) for c in cases.values())
                    sys.stderr.write(f"{suite} {cond} run {i + 1}/{args.runs}: {took:.0f} s, "
                                     f"{done} verdicts so far\n")  # fmt: skip
                results[(suite, cond)] = cases
    print_table(results, conditions, args.runs, markdown=args.markdown)


def print_table(
    results: dict[tuple[str, str], dict[str, Case]],
    conditions: list[str],
    runs: int,
    *,
    markdown: bool,
) -> None:
    for suite in sorted({s for s, _ in results}):
        names = sorted({n for (s, _), cases in results.items() if s == suite for n in cases})
        header = ["test"]
        for cond in conditions:
            header += [f"{cond}: verdicts", f"{cond}: key figure", f"{cond}: recovery s"]
        rows = [header]
        for name in names:
            row = [name]
            for cond in conditions:
                case = results.get((suite, cond), {}).get(name, Case())
                key = next(iter(case.key.items()), None)
                row += [
                    verdicts(case, runs),
                    f"{key[0]} {spread(key[1])}" if key else "-",
                    spread(case.recovery),
                ]
            rows.append(row)
        print(f"\n{suite} ({runs} runs per condition)")
        if markdown:
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            for row in rows[1:]:
                print("| " + " | ".join(row) + " |")
        else:
            widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
            for row in rows:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        reasons = [
            (cond, name, reason, n)
            for (s, cond), cases in results.items()
            if s == suite
            for name, case in cases.items()
            for reason, n in case.reasons.items()
        ]
        for cond, name, reason, n in sorted(reasons):
            print(f"  {cond} {name}: {n}x {reason}")


if __name__ == "__main__":
    main()
