"""Time-ordered identifiers: 48 bits of milliseconds, then 80 random bits, as 32 hex digits."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A new id that sorts by creation time (to the millisecond) and is unique in practice."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
