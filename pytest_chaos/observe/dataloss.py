"""The no-data-loss check: every acknowledged write must exist afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import DataLossDetected
from ..errors import hide_chaos_errors as __tracebackhide__  # noqa: F401


@dataclass(frozen=True)
class DataLossReport:
    """How many acknowledged ids were checked, how many were found, and the lost ones."""

    acknowledged: int
    found: int
    lost: tuple[str, ...]

    @property
    def lost_count(self) -> int:
        return len(self.lost)


def check_no_data_loss(
    acknowledged: Iterable[str],
    lookup: Callable[[list[str]], Iterable[str]],
    *,
    what: str = "acknowledged writes",
    batch: int = 500,
) -> DataLossReport:
    """Ask ``lookup`` which of the acknowledged ids exist (in batches); raise
    :class:`DataLossDetected` naming the missing ones, else return the report."""
    ids = list(dict.fromkeys(str(i) for i in acknowledged))
    found: set[str] = set()
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        found.update(str(i) for i in lookup(chunk))
    lost = tuple(i for i in ids if i not in found)
    report = DataLossReport(acknowledged=len(ids), found=len(ids) - len(lost), lost=lost)
    if lost:
        shown = ", ".join(lost[:10]) + (" ..." if len(lost) > 10 else "")
        error = DataLossDetected(f"{len(lost)} of {len(ids)} {what} are missing: {shown}")
        error.report = report
        raise error
    return report
