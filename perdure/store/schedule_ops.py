"""Cron schedules, written once for both dialects (the part of SQLStore they make): declared in
code or created at run time, fired by every worker, each tick exactly once.

A worker fires what is due in one write: for each due schedule it works out the tick to run
(by the schedule's policy for missed ticks) and the next one, advances the schedule only if it
still holds the next tick it read (another worker that fired it first has moved it), and creates
the tick's run in the same transaction, with an idempotency key naming the tick. However many
workers look at once, each tick makes one run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from perdure import cron, serde
from perdure.ids import new_id
from perdure.records import MissedTicks, NewRun, NewSchedule, ScheduleRecord, Value
from perdure.store.connector import Operation, Query, Result, Row, rows_of
from perdure.store.notify import CLAIMABLE
from perdure.store.rows import Operations, insert_run

SKIP_GRACE = 60.0
"""Seconds late a tick may be and still run under MissedTicks.SKIP (a worker busy, a restart)."""
_FIRE_AT_ONCE = 100  # due schedules fired in one write


class ScheduleOperations(Operations):
    """Schedules over `db`."""

    async def put_schedule(self, schedule: NewSchedule) -> ScheduleRecord:
        """Create or replace a schedule (by app and key); one whose expression and time zone
        stay keeps its next tick."""
        params = {
            "app": schedule.app,
            "key": schedule.key,
            "task": schedule.task,
            "queue": schedule.queue,
            "cron": schedule.cron,
            "tz": schedule.tz,
            "missed": str(schedule.missed),
            "declared": int(schedule.declared),
            "next_at": schedule.next_at,
            "now": self.now(),
        }

        def put() -> Operation[Row]:
            row: Row = (yield Query("put_schedule", params)).first
            return row

        return _schedule(await self.db.write(put, "put_schedule"))

    async def list_schedules(self, app: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (of `app`), by app and key."""
        rows = await self.db.read(
            lambda: rows_of(Query("list_schedules", {"app": app})), "list_schedules"
        )
        return [_schedule(row) for row in rows]

    async def pause_schedule(
        self, app: str, key: str, *, paused: bool, next_at: float | None = None
    ) -> ScheduleRecord | None:
        """Pause or resume a schedule (resuming from `next_at`: the ticks of the pause are not
        caught up); None when there is no such schedule."""
        params = {"app": app, "key": key, "paused": int(paused), "next_at": next_at}
        params["now"] = self.now()

        def pause() -> Operation[Row | None]:
            row: Row | None = (yield Query("pause_schedule", params)).first
            return row

        row = await self.db.write(pause, "pause_schedule")
        return None if row is None else _schedule(row)

    async def delete_schedule(self, app: str, key: str) -> bool:
        """Delete a schedule; False when there was none."""

        def delete() -> Operation[bool]:
            return bool((yield Query("delete_schedule", {"app": app, "key": key})).rowcount)

        return await self.db.write(delete, "delete_schedule")

    async def prune_declared(self, app: str, keep: Collection[str]) -> int:
        """Delete the schedules declared in code (by earlier code) that are not in `keep`."""

        def prune() -> Operation[int]:
            result: Result = yield Query("prune_declared", {"app": app, "keys": sorted(keep)})
            return result.rowcount

        return await self.db.write(prune, "prune_declared")

    async def fire_schedules(self, *, app: str, tasks: list[str]) -> tuple[list[str], float | None]:
        """Fire the due schedules of `tasks`: each tick's run created once, whoever else fires
        at the same moment. Returns the runs created and when the next tick is due (None: no
        schedule)."""
        now = self.now()
        params = {"app": app, "tasks": tasks, "now": now, "limit": _FIRE_AT_ONCE}

        def upcoming() -> Operation[float | None]:
            row = (yield Query("next_schedule_at", params)).first
            return None if row is None else row["next_at"]

        next_at = await self.db.read(upcoming, "next_schedule_at")  # most looks end here
        if next_at is None or next_at > now:
            return [], next_at

        def fire() -> Operation[tuple[list[str], float | None]]:
            created = []
            for row in (yield Query("due_schedules", params)).rows:
                plan = self._plan(row, now)
                advanced = yield Query("advance_schedule", plan["advance"])
                if advanced.rowcount == 1 and plan["run"] is not None:
                    yield from insert_run(plan["run"])
                    created.append(plan["run"]["id"])
            upcoming = (yield Query("next_schedule_at", params)).first
            return created, None if upcoming is None else upcoming["next_at"]

        runs, next_at = await self.db.write(fire, "fire_schedules", (CLAIMABLE,), durable=True)
        return runs, next_at

    def _plan(self, row: Row, now: float) -> dict[str, Any]:
        """The tick a due schedule runs (None: skipped by its policy), its run, and how it
        advances."""
        expr, tz, seen = row["cron"], row["tz"], row["next_at"]
        latest, following = seen, cron.next_tick(expr, tz, seen)
        if following <= now:  # ticks were missed (no worker, or paused): the latest of them
            latest = cron.last_tick(expr, tz, now)
            following = cron.next_tick(expr, tz, now)
        late = now - latest
        runs = MissedTicks(row["missed"]) is MissedTicks.RUN_ONCE or late <= SKIP_GRACE
        run = None
        if runs:
            scheduled_at = dt.datetime.fromtimestamp(latest, dt.UTC)
            data = serde.encode([[scheduled_at], {}], codec=serde.Codec.MSGPACK, what="tick")
            new = NewRun(
                id=new_id(),
                app=row["app"],
                task=row["task"],
                queue=row["queue"],
                args=Value(codec=str(serde.Codec.MSGPACK), data=data, raw_size=len(data)),
                idempotency_key=f"perdure:schedule:{row['key']}:{latest:.6f}",
                available_at=now,
            )
            run = self._run_params(new, now, new.args)
        advance = {
            "app": row["app"],
            "key": row["key"],
            "seen": seen,
            "next_at": following,
            "tick": latest if runs else None,
            "run_id": None if run is None else run["id"],
            "now": now,
        }
        return {"run": run, "advance": advance}


def _schedule(row: Row) -> ScheduleRecord:
    return ScheduleRecord(
        app=row["app"],
        key=row["key"],
        task=row["task"],
        queue=row["queue"],
        cron=row["cron"],
        tz=row["tz"],
        missed=MissedTicks(row["missed"]),
        declared=bool(row["declared"]),
        paused=bool(row["paused"]),
        next_at=row["next_at"],
        last_tick=row["last_tick"],
        last_run_id=row["last_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
