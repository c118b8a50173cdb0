"""What every fault hands back: a description of what is in force."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401


@dataclass
class FaultHandle:
    """Base of every fault's handle. ``kind`` and ``target`` name the fault;
    ``applied_at`` is a time.monotonic() reading taken when it took effect."""

    kind: str
    target: str
    applied_at: float = field(default_factory=time.monotonic)
    undone_at: float | None = None
    #: How the undo restored the target (set by the undo).
    restored_by: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.target}"

    def figures(self) -> dict[str, float | int | str]:
        """Plain numbers and strings for reports (JUnit properties)."""
        out: dict[str, float | int | str] = {"kind": self.kind, "target": self.target}
        if self.undone_at is not None:
            out["in_force_s"] = round(self.undone_at - self.applied_at, 3)
        if self.restored_by is not None:
            out["restored_by"] = self.restored_by
        return out
