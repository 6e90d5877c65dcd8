"""Time-ordered identifiers: 48 bits of milliseconds, then 80 random bits, as 32 hex digits.

Within one process, ids made in the same millisecond keep increasing (the random part is
incremented, as in monotonic ULIDs), so sorting by id is sorting by creation.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_last_random = 0
_RANDOM_MAX = (1 << 80) - 1


def new_id() -> str:
    """A new id that sorts by creation time and is unique in practice."""
    global _last_ms, _last_random
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms and _last_random < _RANDOM_MAX:
            ms, random_part = _last_ms, _last_random + 1
        else:
            random_part = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        _last_ms, _last_random = ms, random_part
    return f"{ms:012x}{random_part:020x}"
