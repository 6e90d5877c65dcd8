"""Cron schedules: declared and dynamic, each tick exactly once (three worker processes on an
every-second schedule), pause and resume, the tick's time given to the run."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import perdure
from perdure.errors import ConfigurationError

from . import cronapp
from .conftest import ROOT, WorkerProcess, running_worker, wait_until


async def test_a_declared_schedule_runs_each_tick_with_its_time(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    ticks: list[dt.datetime] = []

    @app.task(name="beat", schedule=perdure.Cron("* * * * * *"))
    async def beat(scheduled_at: dt.datetime) -> None:
        ticks.append(scheduled_at)

    async with running_worker(app):
        await wait_until(lambda: len(ticks) >= 3, timeout=15)
        (schedule,) = await app.schedules.list()
    assert schedule.key == "beat"
    assert schedule.declared
    assert all(t.tzinfo is not None for t in ticks)
    seconds = [t.timestamp() for t in ticks[:3]]
    assert seconds == [seconds[0], seconds[0] + 1, seconds[0] + 2]  # every tick, once
    assert seconds[0] == int(seconds[0])
    await app.close()


async def test_schedules_made_at_run_time_pause_resume_and_delete(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    seen: list[dt.datetime] = []

    @app.task(name="report")
    async def report(scheduled_at: dt.datetime) -> None:
        seen.append(scheduled_at)

    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        await app.schedules.create("report", cron="every day")
    made = await app.schedules.create("report", cron="* * * * * *", key="customer-42")
    assert (made.key, made.task, made.cron, made.tz) == (
        "customer-42",
        "report",
        "* * * * * *",
        "UTC",
    )
    async with running_worker(app):
        await wait_until(lambda: len(seen) >= 2, timeout=15)
        paused = await app.schedules.pause("customer-42")
        assert paused.paused
        await asyncio.sleep(0.2)  # a run of the last tick may still be starting
        count = len(seen)
        await asyncio.sleep(2.2)
        assert len(seen) == count  # paused: nothing fired
        await app.schedules.resume("customer-42")
        await wait_until(lambda: len(seen) > count, timeout=15)
        assert await app.schedules.delete("customer-42")
    assert await app.schedules.list() == []
    await app.close()


async def test_each_tick_runs_once_with_three_worker_processes(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    """Three workers fire an every-second schedule for a few seconds: every tick between the
    first and the last ran exactly once."""
    log = tmp_path / "ticks.log"
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(log),
    }
    for i in range(3):
        worker = WorkerProcess("tests.cronapp:app", env, log=tmp_path / f"w{i}.log")
        worker_processes.append(worker)
    await wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 6, timeout=60)
    for worker in worker_processes:
        worker.terminate()
    lines = [line.split() for line in log.read_text().splitlines()]
    ticks = collections.Counter(float(tick) for tick, _pid in lines)
    assert max(ticks.values()) == 1, ticks  # no tick twice
    first, last = min(ticks), max(ticks)
    assert sorted(ticks) == [first + i for i in range(int(last - first) + 1)]  # none missed
    assert cronapp.app.name == "cron"


def _perdure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perdure", *args],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_schedules_commands(tmp_path: Path) -> None:
    env = {"PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db"}
    app = ("--app", "tests.cronapp:app")
    made = _perdure(
        env,
        "schedules",
        "create",
        "every_second",
        "--cron",
        "0 9 * * 1-5",
        "--tz",
        "Europe/Paris",
        "--key",
        "weekdays",
        *app,
        "--json",
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert (created["key"], created["tz"], created["paused"]) == ("weekdays", "Europe/Paris", False)
    nine = dt.datetime.fromtimestamp(created["next_at"], ZoneInfo("Europe/Paris"))
    assert (nine.hour, nine.minute, nine.weekday() < 5) == (9, 0, True)
    bad = _perdure(env, "schedules", "create", "every_second", "--cron", "0 25 * * *", *app)
    assert bad.returncode == 1
    assert "invalid cron expression" in bad.stdout
    paused = _perdure(env, "schedules", "pause", "weekdays", "--app-name", "cron", "--json")
    assert json.loads(paused.stdout)["paused"] is True
    resumed = _perdure(env, "schedules", "resume", "weekdays", "--app-name", "cron", "--json")
    assert json.loads(resumed.stdout)["paused"] is False
    listed = _perdure(env, "schedules", "list", "--json")
    assert [s["key"] for s in json.loads(listed.stdout)] == ["weekdays"]
    gone = _perdure(env, "schedules", "delete", "weekdays", "--app-name", "cron")
    assert gone.returncode == 0
    assert _perdure(env, "schedules", "delete", "weekdays", "--app-name", "cron").returncode == 1
