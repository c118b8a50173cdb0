"""The end-of-run summary: one row per test that injected faults or recorded figures,
read from the figures it recorded (the same ones its JUnit properties carry).

Columns read these figure names, which the ``chaos`` fixture and the bundled
experiments record (a test of your own gets the same row by recording them):
``experiment``; ``chaos_fault_N_kind`` / ``chaos_fault_N_target``; the recovery time,
the first of ``recovery_time_s``, ``outage_s``, ``recovery_*_s``,
``back_to_baseline_s``; ``orders_acknowledged`` / ``orders_lost``; the key BPF figure,
the one recorded with ``chaos.record(..., key=True)`` (else the first ``bpf_*``
number); and the fallbacks: a BPF ``*_source`` of ``proc``, a ``*method`` of
``nfqueue``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

KEY_FIGURE = "chaos_key_figure"
_FAULT_KIND = re.compile(r"^chaos_fault_(\d+)_kind$")
COLUMNS = (
    "experiment",
    "test",
    "fault",
    "target",
    "verdict",
    "recovery",
    "orders ack/lost",
    "key figure",
    "fallback",
)


@dataclass
class TestResult:
    nodeid: str
    outcome: str = "passed"  # passed, failed, error, skipped
    figures: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    #: The failure's (or skip's) report text, when there is one.
    message: str = ""


def row(result: TestResult) -> tuple[str, ...]:
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
        _recovery(f),
        _orders(f),
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


def table(results: Sequence[TestResult]) -> list[str]:
    """The summary as aligned text lines (header first)."""
    rows = [COLUMNS, *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
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


def _orders(f: Mapping[str, str]) -> str:
    if "orders_lost" not in f:
        return "-"
    return f"{f.get('orders_acknowledged', '?')}/{f['orders_lost']}"


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
