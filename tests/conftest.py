"""Markers by folder: tests/unit, tests/plugin, tests/integration, tests/experiments."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Shared, noisy machines: Hypothesis' default 200 ms deadline would fail on load, not
# on a bug. The examples stay the same; only the timing check is off.
settings.register_profile("chaos", deadline=None)
settings.load_profile("chaos")

_LEVELS = {"unit": "unit", "plugin": "plugin", "integration": "integration", "weakened": "weakened"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        try:
            level = item.path.relative_to(here).parts[0]
        except ValueError:
            continue
        if level in _LEVELS:
            item.add_marker(getattr(pytest.mark, _LEVELS[level]))
