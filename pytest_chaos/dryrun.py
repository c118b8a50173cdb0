"""``--chaos-dry-run``: which faults each selected test would inject, read from its
source, with nothing run and nothing changed (no stack started, no journal replayed).

The faults are the calls on the ``chaos`` fixture in the test function's own body
(nested functions included), shown as written, with their line numbers. A fault made
in a helper the test calls is not seen: the listing says when a test makes none.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest


def fault_calls() -> frozenset[str]:
    """The calls on ``chaos`` that apply a fault: every registered fault, inject, and
    the schedules (run_schedule, explore: their steps are drawn or given at run time)."""
    from .registry import faults

    return frozenset(faults()) | {"inject", "run_schedule", "explore"}


@dataclass(frozen=True)
class PlannedFault:
    call: str  # the call as written, e.g. chaos.kill("postgres", "SIGKILL")
    line: int  # in the test's file
    name: str = ""  # the fault's (or inject, run_schedule, explore)


def planned_faults(item: pytest.Item) -> list[PlannedFault] | None:
    """The fault calls in ``item``'s test function, or None when its source cannot
    be read (a test that is not a Python function)."""
    function = getattr(item, "function", None)
    if function is None:
        return None
    try:
        lines, first = inspect.getsourcelines(function)
    except (OSError, TypeError):
        return None
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    fixture = "chaos"
    calls = fault_calls()
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == fixture
            and node.func.attr in calls
        ):
            text = ast.get_source_segment(source, node) or f"{fixture}.{node.func.attr}(...)"
            found.append(
                PlannedFault(" ".join(text.split()), first + node.lineno - 1, node.func.attr)
            )
    return sorted(found, key=lambda f: f.line)


def needs(name: str) -> str:
    """What a registered fault says it needs, as the dry run shows it ("" for none)."""
    from .registry import faults

    kind = faults().get(name)
    return f"  [needs: {', '.join(kind.requires)}]" if kind is not None and kind.requires else ""


def report(items: Sequence[pytest.Item], out: Callable[[str], None]) -> None:
    out(f"pytest-chaos dry run: {len(items)} test(s) selected; nothing runs, nothing changes")
    for item in items:
        out(item.nodeid)
        faults = planned_faults(item)
        if faults is None:
            out("    (source not readable: faults unknown)")
        elif not faults:
            out("    no fault calls on the chaos fixture in this test's body")
        for fault in faults or []:
            out(f"    line {fault.line}: {fault.call}{needs(fault.name)}")
