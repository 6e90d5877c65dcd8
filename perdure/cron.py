"""Cron schedules' time arithmetic: the next tick of an expression in a time zone, kept in POSIX
seconds (the store's clock), daylight saving time included.

On the day clocks go forward, a tick in the skipped hour runs when the hour resumes (a job at
02:30 runs at 03:00). On the day they go back, a job at fixed hours runs once, not at both
02:30s; a job on every hour ("0 * * * *") runs at each real hour, both 02:00s included.
Expressions have five fields, or six with seconds last (croniter's convention).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from perdure.errors import ConfigurationError

if TYPE_CHECKING:
    from croniter import croniter


@functools.cache
def _croniter() -> type[croniter]:
    """croniter, imported on first use (it takes tens of milliseconds: not for every process
    that imports perdure)."""
    from croniter import croniter

    return croniter


def zone(tz: str) -> ZoneInfo:
    """The time zone `tz` (an IANA name, e.g. "Europe/Paris"); ConfigurationError if unknown."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown time zone {tz!r} (use an IANA name, e.g. 'UTC' or 'Europe/Paris'): {exc}"
        ) from None


def check(expr: str, tz: str) -> None:
    """ConfigurationError, with the reason, unless `expr` is a valid cron expression and `tz` a
    known time zone."""
    zone(tz)
    fields = expr.split()
    if len(fields) not in (5, 6) or not _croniter().is_valid(expr):
        raise ConfigurationError(
            f"invalid cron expression {expr!r}: five fields (minute hour day-of-month month "
            "day-of-week), or six with seconds last, e.g. '0 9 * * 1-5'"
        )


def next_tick(expr: str, tz: str, after: float) -> float:
    """The first tick of `expr` in `tz` strictly after `after` (POSIX seconds)."""
    where = zone(tz)
    start = dt.datetime.fromtimestamp(after, where)
    ticks = _croniter()(expr, start)
    tick: dt.datetime = ticks.get_next(dt.datetime)
    fixed_hours = expr.split()[1] != "*"
    while fixed_hours and tick.replace(tzinfo=None) == start.replace(tzinfo=None):
        tick = ticks.get_next(dt.datetime)  # the same wall-clock time again: clocks went back
    return tick.timestamp()


def last_tick(expr: str, tz: str, at_or_before: float) -> float:
    """The last tick of `expr` in `tz` at or before `at_or_before` (POSIX seconds)."""
    where = zone(tz)
    tick: dt.datetime = _croniter()(expr, dt.datetime.fromtimestamp(at_or_before, where)).get_prev(
        dt.datetime
    )
    after = next_tick(expr, tz, tick.timestamp())
    return after if after <= at_or_before else tick.timestamp()


def local(ts: float, tz: str) -> dt.datetime:
    """`ts` as an aware datetime in `tz`."""
    return dt.datetime.fromtimestamp(ts, zone(tz))
