"""Cron schedules, as the App sees them: declared with `@app.task(schedule=perdure.Cron(...))`,
or made at run time with `app.schedules` (create, list, pause, resume, delete). Each tick of a
schedule starts one run of its task, however many workers run, with the tick's time (an aware
UTC datetime) as the task's first argument. See store/schedule_ops.py for how."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perdure import cron
from perdure.errors import ConfigurationError
from perdure.records import MissedTicks, NewSchedule, ScheduleRecord
from perdure.store.base import Store

if TYPE_CHECKING:
    from perdure.app import App
    from perdure.task import Task


@dataclass(frozen=True, slots=True)
class Cron:
    """When a task runs: `perdure.Cron("0 9 * * 1-5", tz="Europe/Paris")` — a cron expression
    (five fields, or six with seconds last) read in an IANA time zone (default UTC). `missed`
    says what to do with ticks that passed while no worker ran: "run_once" (one run for the
    latest of them) or "skip" (none, unless less than a minute late). A bad expression or time
    zone is refused here, with the reason."""

    expr: str
    tz: str = "UTC"
    missed: str = "run_once"

    def __post_init__(self) -> None:
        cron.check(self.expr, self.tz)
        _policy(self.missed)


def _policy(missed: str) -> MissedTicks:
    try:
        return MissedTicks(missed)
    except ValueError:
        raise ConfigurationError(
            f"missed must be one of {', '.join(m.value for m in MissedTicks)}, got {missed!r}"
        ) from None


class Schedules:
    """An App's schedules (app.schedules)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.declared: dict[str, NewSchedule] = {}
        """The schedules this code declares, by key (the task's name)."""

    def declare(self, task: Task[Any, Any], when: Cron) -> None:
        """@app.task(schedule=...): `task` runs at each tick of `when`."""
        _takes_a_tick(task)
        self.declared[task.name] = self._new(task, when, key=task.name, declared=True)

    async def create(
        self,
        task: str,
        *,
        cron: str,
        tz: str = "UTC",
        key: str | None = None,
        missed: str = "run_once",
    ) -> ScheduleRecord:
        """Create (or replace) a schedule of `task` under `key` (default: the task's name),
        from now on: `await app.schedules.create("report", cron="*/5 * * * *", key="c-42")`."""
        target = self.app.get_task(task)
        _takes_a_tick(target)
        store = self.app.store
        await store.open()
        new = self._new(target, Cron(cron, tz, missed), key=key or target.name, declared=False)
        return await store.put_schedule(dataclasses.replace(new, next_at=_next(new, store.now())))

    async def list(self) -> list[ScheduleRecord]:
        """The app's schedules, by key."""
        return await self.app.store.list_schedules(self.app.name)

    async def pause(self, key: str) -> ScheduleRecord:
        """Stop firing a schedule (its ticks while paused are not caught up)."""
        return await pause(self.app.store, self.app.name, key)

    async def resume(self, key: str) -> ScheduleRecord:
        """Fire a paused schedule again, from its next tick after now."""
        return await resume(self.app.store, self.app.name, key)

    async def delete(self, key: str) -> bool:
        """Delete a schedule; False when there was none. (A schedule declared in code comes
        back when a worker of that code starts: remove it from the code.)"""
        return await self.app.store.delete_schedule(self.app.name, key)

    def _new(self, task: Task[Any, Any], when: Cron, *, key: str, declared: bool) -> NewSchedule:
        return NewSchedule(
            app=self.app.name,
            key=key,
            task=task.name,
            queue=task.queue,
            cron=when.expr,
            tz=when.tz,
            missed=_policy(when.missed),
            declared=declared,
            next_at=0.0,
        )


async def pause(store: Store, app: str, key: str) -> ScheduleRecord:
    """Stop firing schedule `key` of `app`."""
    return _found(app, key, await store.pause_schedule(app, key, paused=True))


async def resume(store: Store, app: str, key: str) -> ScheduleRecord:
    """Fire schedule `key` of `app` again, from its next tick after now (not the ticks of the
    pause)."""
    existing = {s.key: s for s in await store.list_schedules(app)}.get(key)
    if existing is None:
        raise ConfigurationError(f"no schedule {key!r} in app {app!r}")
    first = cron.next_tick(existing.cron, existing.tz, store.now())
    return _found(app, key, await store.pause_schedule(app, key, paused=False, next_at=first))


def _next(schedule: NewSchedule, now: float) -> float:
    return cron.next_tick(schedule.cron, schedule.tz, now)


def _found(app: str, key: str, record: ScheduleRecord | None) -> ScheduleRecord:
    if record is None:
        raise ConfigurationError(f"no schedule {key!r} in app {app!r}")
    return record


def _takes_a_tick(task: Task[Any, Any]) -> None:
    """A scheduled task takes the tick's time as its first argument."""
    try:
        task.signature.bind(None)
    except TypeError:
        raise ConfigurationError(
            f"task {task.name!r} is scheduled: it must take the tick's time as its one "
            f"argument (e.g. `async def {task.name}(scheduled_at: datetime)`), but its "
            f"signature is {task.signature}"
        ) from None
