"""Counters the API exposes on GET /metrics, so experiments can see what it did."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def inc(self, name: str, by: int = 1) -> None:
        self._counts[name] += by

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))
