"""Retention: delete old runs, then the blobs that no stored row references any more.

Safe while workers write. Runs are deleted only once ended (and never a child whose parent still
waits for it). A blob is deleted only if it is unreferenced *and* was last written before the
grace period: a step puts its large value before its journal entry exists, and a put of bytes
already stored refreshes the blob's time once it is REFRESH_AFTER old, so a blob that is being
used again is never taken.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from perdure.blobs.base import REFRESH_AFTER, BlobStore
from perdure.records import RunStatus
from perdure.store.base import Store

DEFAULT_GRACE = 3600.0
"""Blobs written within this many seconds are kept even if nothing references them yet."""
MIN_GRACE = 2 * REFRESH_AFTER
"""The shortest grace that is safe: a blob used again is refreshed once it is REFRESH_AFTER
old."""

_BATCH = 500
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in an age such as 30d, 12h, 90m, 45s or 2w (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"not an age: {text!r} (use e.g. 30d, 12h, 90m, 45s, 2w)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(slots=True)
class PurgeReport:
    """What a purge did (or, dry, would do to runs)."""

    runs: int = 0
    """Runs deleted (or found, with dry_run)."""
    blobs: int = 0
    """Unreferenced blobs deleted."""
    partial: int = 0
    """Temporary files of blob writes that never finished, removed."""


async def purge(
    store: Store,
    blobs: BlobStore,
    *,
    older_than: float,
    statuses: Collection[RunStatus] = (
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.EXPIRED,
    ),
    app: str | None = None,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    progress: Callable[[PurgeReport], None] | None = None,
) -> PurgeReport:
    """Delete runs that ended more than `older_than` seconds ago (in `statuses`), then every
    blob that no row references and that was written more than `grace` seconds ago."""
    if grace < 2 * REFRESH_AFTER:
        raise ValueError(
            f"grace must be at least {2 * REFRESH_AFTER:.0f} s: a blob in use is refreshed "
            f"only every {REFRESH_AFTER:.0f} s"
        )
    report = PurgeReport()
    now = time.time()
    cutoff = now - older_than
    if dry_run:
        found = await store.purge_runs(
            finished_before=cutoff, statuses=statuses, app=app, limit=1_000_000, dry_run=True
        )
        report.runs = len(found)
        return report
    while True:
        deleted = await store.purge_runs(
            finished_before=cutoff, statuses=statuses, app=app, limit=_BATCH
        )
        report.runs += len(deleted)
        if progress is not None:
            progress(report)
        if len(deleted) < _BATCH:
            break
    report.partial = await blobs.remove_partial_writes()
    # blobs: listed first, then checked against what the rows reference now; the store checks
    # each blob's time once more as it deletes (a put may have refreshed it meanwhile)
    written_before = now - grace
    candidates = await blobs.keys_older_than(written_before)
    for start in range(0, len(candidates), _BATCH):
        batch = candidates[start : start + _BATCH]
        referenced = await store.referenced_blobs(batch)
        unreferenced = [key for key in batch if key not in referenced]
        report.blobs += await blobs.delete(unreferenced, written_before=written_before)
        if progress is not None:
            progress(report)
    return report
