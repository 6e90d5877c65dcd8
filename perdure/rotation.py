"""`perdure encryption rotate`: rewrite every stored value under the current key.

Run it with the new key in PERDURE_ENCRYPTION_KEY and the old ones in
PERDURE_ENCRYPTION_OLD_KEYS; workers may keep running (they write under the new key already,
given the same settings). With no current key but old keys set, it decrypts everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from perdure.blobs.base import BlobStore
from perdure.store.base import Store


@dataclass(slots=True)
class RotationReport:
    """What a rotation rewrote."""

    values: int = 0
    """Inline values rewritten (run arguments, results, journal entries)."""
    blobs: int = 0
    """Blobs rewritten."""
    blobs_seen: int = 0
    """Blobs looked at."""


async def rotate(
    store: Store,
    blobs: BlobStore,
    *,
    progress: Callable[[RotationReport], None] | None = None,
) -> RotationReport:
    """Rewrite inline values, then blobs, that are not stored under the current key."""
    report = RotationReport()
    after: str | None = ""
    while after is not None:
        count, after = await store.reencrypt_values(after=after)
        report.values += count
        if progress is not None:
            progress(report)
    if report.values:
        await store.reclaim()  # the old bytes of the rewritten rows
    for key in await blobs.keys_older_than(math.inf):
        report.blobs_seen += 1
        report.blobs += await blobs.reencrypt(key)
        if progress is not None and report.blobs_seen % 100 == 0:
            progress(report)
    return report
