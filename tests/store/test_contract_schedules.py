"""The Store contract for cron schedules: each tick fires once however many fire at once,
missed ticks by policy, pause and resume, declared schedules kept and pruned — every backend."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec

from perdure import cron
from perdure.records import MissedTicks, NewSchedule
from perdure.store.base import Store

from .test_contract import APP


def _schedule(
    key: str = "s", *, expr: str = "* * * * *", next_at: float, **more: object
) -> NewSchedule:
    return NewSchedule(app=APP, key=key, task="t", cron=expr, tz="UTC", next_at=next_at, **more)  # type: ignore[arg-type]


async def test_a_due_tick_fires_once_however_many_fire_at_once(store: Store) -> None:
    now = store.now()
    due = cron.last_tick("* * * * *", "UTC", now)
    await store.put_schedule(_schedule(next_at=due))
    fired = await asyncio.gather(*(store.fire_schedules(app=APP, tasks=["t"]) for _ in range(5)))
    created = [run for runs, _next in fired for run in runs]
    assert len(created) == 1
    (run,) = await store.get_runs(created)
    assert run.task == "t"
    args = msgspec.msgpack.decode(run.args.data) if run.args else None
    assert args is not None
    (schedule,) = await store.list_schedules(APP)
    assert schedule.last_tick == due
    assert schedule.last_run_id == created[0]
    assert schedule.next_at == cron.next_tick("* * * * *", "UTC", due)
    assert all(next_at == schedule.next_at for _runs, next_at in fired)
    assert (await store.fire_schedules(app=APP, tasks=["t"]))[0] == []  # nothing due now
    assert (await store.fire_schedules(app=APP, tasks=["other"])) == ([], None)


async def test_missed_ticks_run_once_or_are_skipped_by_policy(store: Store) -> None:
    now = store.now()
    # hourly, at the minute half an hour from now: its latest tick is ~30 minutes old
    expr = f"{(int(now // 60) + 30) % 60} * * * *"
    long_ago = cron.last_tick(expr, "UTC", now - 5 * 3600)  # five hours of ticks missed
    await store.put_schedule(_schedule("once", expr=expr, next_at=long_ago))
    skip = _schedule("skip", expr=expr, next_at=long_ago, missed=MissedTicks.SKIP)
    await store.put_schedule(skip)
    runs, _ = await store.fire_schedules(app=APP, tasks=["t"])
    assert len(runs) == 1  # one catch-up run for "once", none for "skip"
    by_key = {s.key: s for s in await store.list_schedules(APP)}
    latest = cron.last_tick(expr, "UTC", now)
    assert by_key["once"].last_tick == latest  # the latest missed tick, not the first
    assert by_key["skip"].last_tick is None
    assert by_key["once"].next_at > now
    assert by_key["skip"].next_at > now


async def test_pause_resume_delete_and_declared_schedules(store: Store) -> None:
    now = store.now()
    due = cron.last_tick("* * * * *", "UTC", now)
    made = await store.put_schedule(_schedule(next_at=due, declared=True))
    assert made.declared
    assert not made.paused
    paused = await store.pause_schedule(APP, "s", paused=True)
    assert paused is not None
    assert paused.paused
    assert (await store.fire_schedules(app=APP, tasks=["t"]))[0] == []
    later = cron.next_tick("* * * * *", "UTC", now)
    resumed = await store.pause_schedule(APP, "s", paused=False, next_at=later)
    assert resumed is not None
    assert resumed.next_at == later
    # declared again with the same expression: its next tick stays; with another, it moves
    again = await store.put_schedule(_schedule(next_at=later + 999, declared=True))
    assert again.next_at == later
    moved = await store.put_schedule(
        dataclasses.replace(_schedule(next_at=later + 999, declared=True), cron="*/5 * * * *")
    )
    assert moved.next_at == later + 999
    await store.put_schedule(_schedule("dynamic", next_at=later))
    assert await store.prune_declared(APP, keep=[]) == 1  # the declared one; not "dynamic"
    assert [s.key for s in await store.list_schedules(APP)] == ["dynamic"]
    assert await store.delete_schedule(APP, "dynamic")
    assert not await store.delete_schedule(APP, "dynamic")
    assert await store.pause_schedule(APP, "nope", paused=True) is None
