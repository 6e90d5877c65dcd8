"""Cron arithmetic: daylight saving time on both days, seconds, bad input refused."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

import perdure
from perdure import cron
from perdure.errors import ConfigurationError

PARIS = "Europe/Paris"


def _ticks(expr: str, tz: str, start: dt.datetime, count: int) -> list[str]:
    at, out = start.timestamp(), []
    for _ in range(count):
        at = cron.next_tick(expr, tz, at)
        out.append(cron.local(at, tz).isoformat())
    return out


def test_spring_forward_runs_a_tick_of_the_skipped_hour_when_the_hour_resumes() -> None:
    # 2026-03-29: 02:00 -> 03:00 in Paris; 02:30 does not exist that day
    start = dt.datetime(2026, 3, 28, 12, tzinfo=ZoneInfo(PARIS))
    assert _ticks("30 2 * * *", PARIS, start, 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert _ticks("0 9 * * *", PARIS, start, 2) == [
        "2026-03-29T09:00:00+02:00",
        "2026-03-30T09:00:00+02:00",
    ]


def test_fall_back_runs_a_fixed_time_once_and_every_real_hour_of_an_hourly_job() -> None:
    # 2026-10-25: 03:00 -> 02:00 in Paris; 02:30 happens twice that day
    start = dt.datetime(2026, 10, 24, 12, tzinfo=ZoneInfo(PARIS))
    assert _ticks("30 2 * * *", PARIS, start, 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",  # not a second run at 02:30+01:00 on the 25th
    ]
    night = dt.datetime(2026, 10, 25, 0, 30, tzinfo=ZoneInfo(PARIS))
    assert _ticks("0 * * * *", PARIS, night, 4) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # an hour later: a real hour of its own
        "2026-10-25T03:00:00+01:00",
    ]


def test_seconds_and_the_last_tick() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert [cron.next_tick("* * * * * *", "UTC", t0 + i) - t0 for i in range(3)] == [1, 2, 3]
    assert cron.last_tick("0 * * * *", "UTC", t0 + 5400) == t0 + 3600
    assert cron.last_tick("0 * * * *", "UTC", t0 + 3600) == t0 + 3600  # at a tick: that one


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("* * *", "UTC", "invalid cron expression"),
        ("0 9 * * 1-5", "Mars/Olympus_Mons", "unknown time zone"),
    ],
)
def test_a_bad_expression_or_time_zone_is_refused_at_declaration(
    expr: str, tz: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        perdure.Cron(expr, tz=tz)
    with pytest.raises(ConfigurationError, match="missed must be one of"):
        perdure.Cron("0 9 * * *", missed="sometimes")


def test_a_scheduled_task_takes_the_tick_time() -> None:
    app = perdure.App("cron-check")
    with pytest.raises(ConfigurationError, match="tick's time as its one argument"):

        @app.task(schedule=perdure.Cron("0 9 * * *"))
        async def no_args() -> None: ...
