"""The end-of-run summary: one row per test that injected faults or recorded figures,
read from the figures it recorded (the same ones its JUnit properties carry).

Columns read these figure names, which the ``chaos`` fixture and the bundled
experiments record (a test of your own gets the same row by recording them):
``experiment``; ``chaos_fault_N_kind`` / ``chaos_fault_N_target``; the recovery time,
the first of ``recovery_time_s``, ``outage_s``, ``recovery_*_s``,
``back_to_baseline_s``; the key figure,
the one recorded with ``chaos.record(..., key=True)`` (else the first ``bpf_*``
number); and the fallbacks: a BPF ``*_source`` of ``proc``, a ``*method`` of
``nfqueue``.

A project adds columns of its own figures with the ini option
``chaos_summary_columns``, a line per column: ``TITLE = FIGURE[/FIGURE...]``; the
cell shows those figures' values joined by ``/`` (``?`` for one the test did not
record, ``-`` when it recorded none of them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import ConfigurationError

KEY_FIGURE = "chaos_key_figure"
_RESTORERS = ("restart-policy", "pytest-chaos")
_FAULT_KIND = re.compile(r"^chaos_fault_(\d+)_kind$")
_FIGURE_NAME = re.compile(r"^[\w.:-]+$")


@dataclass(frozen=True)
class SummaryColumn:
    """A project's column: its title and the figures its cells show."""

    title: str
    figures: tuple[str, ...]

    def cell(self, figures: Mapping[str, str]) -> str:
        if not any(name in figures for name in self.figures):
            return "-"
        return "/".join(figures.get(name, "?") for name in self.figures)


def parse_columns(lines: Iterable[str]) -> list[SummaryColumn]:
    """``chaos_summary_columns``' lines as columns; a malformed line is refused."""
    columns = []
    for line in lines:
        if not line.strip():
            continue
        title, sep, names = line.rpartition("=")
        figures = tuple(n.strip() for n in names.split("/"))
        if not sep or not title.strip() or not all(_FIGURE_NAME.match(n) for n in figures):
            raise ConfigurationError(
                f"chaos_summary_columns line {line.strip()!r} is not 'TITLE = FIGURE[/FIGURE...]' "
                "(figure names are letters, digits, _ . : -)."
            )
        columns.append(SummaryColumn(title.strip(), figures))
    return columns


def columns(extra: Sequence[SummaryColumn] = ()) -> tuple[str, ...]:
    """The table's titles: the generic ones with the project's before the key figure."""
    return (
        "experiment",
        "test",
        "fault",
        "target",
        "verdict",
        "recovery",
        *(c.title for c in extra),
        "key figure",
        "fallback",
    )


@dataclass
class TestResult:
    nodeid: str
    #: passed, failed, error, skipped, xfailed, interrupted, no-effect
    outcome: str = "passed"
    figures: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    #: The failure's (or skip's) report text, when there is one.
    message: str = ""


def row(result: TestResult, extra: Sequence[SummaryColumn] = ()) -> tuple[str, ...]:
    f = result.figures
    kinds = sorted(
        (int(m.group(1)), value) for name, value in f.items() if (m := _FAULT_KIND.match(name))
    )
    faults = _unique(kind for _, kind in kinds)
    targets = _unique(t for n, _ in kinds if (t := f.get(f"chaos_fault_{n}_target")))
    return (
        f.get("experiment", "-"),
        result.nodeid.rsplit("::", 1)[-1],
        ", ".join(faults) or "-",
        ", ".join(targets) or "-",
        result.outcome.upper(),
        _restored_by(_recovery(f), f),
        *(column.cell(f) for column in extra),
        _key_figure(f),
        ", ".join(fallbacks(f)) or "-",
    )


def fallbacks(figures: Mapping[str, str]) -> list[str]:
    """The fallback paths a test's figures say it took."""
    found = []
    if any(k.endswith("_source") and v == "proc" for k, v in figures.items()):
        found.append("no BPF: /proc counters")
    if any(k.endswith("method") and v == "nfqueue" for k, v in figures.items()):
        found.append("no netem: NFQUEUE")
    return found


def table(results: Sequence[TestResult], extra: Sequence[SummaryColumn] = ()) -> list[str]:
    """The summary as aligned text lines (header first)."""
    titles = columns(extra)
    rows = [titles, *(row(r, extra) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(titles))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _recovery(f: Mapping[str, str]) -> str:
    for name in ("recovery_time_s", "outage_s"):
        if name in f:
            return f"{_number(f[name])} s"
    for name, value in f.items():
        if (name.startswith("recovery_") and name.endswith("_s")) or name == "back_to_baseline_s":
            return f"{_number(value)} s"
    return "-"


def _restored_by(recovery: str, f: Mapping[str, str]) -> str:
    """The recovery cell, saying who brought a stopped service back where someone had
    to: its restart policy or pytest-chaos (the undo started it)."""
    who = ", ".join(
        _unique(v for k, v in f.items() if k.endswith("_restored_by") and v in _RESTORERS)
    )
    if not who:
        return recovery
    return f"by {who}" if recovery == "-" else f"{recovery} ({who})"


def _key_figure(f: Mapping[str, str]) -> str:
    name = f.get(KEY_FIGURE)
    if name is None:
        name = next(
            (
                k
                for k, v in f.items()
                if k.startswith("bpf_")
                and not k.endswith(("_source", "_degraded"))
                and _is_number(v)
            ),
            None,
        )
    if name is None or name not in f:
        return "-"
    return f"{name}={f[name]}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> str:
    try:
        return f"{float(text):.2f}"
    except ValueError:
        return text
