"""A report every weekday at 9 in Paris: a cron schedule declared on the task. Each tick runs
once however many workers run, with the tick's time as the task's argument; a tick missed
while no worker ran is run once when one starts (missed="run_once").

    perdure worker examples.daily_report:app        # and the schedule fires by itself

Run it as a demo of its own (a fresh embedded store, and an extra schedule every second so
the demo need not wait for Monday 9:00):

    python examples/daily_report.py
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
from zoneinfo import ZoneInfo

import perdure

if __name__ == "__main__":  # the demo: its own store in a temporary folder
    _HOME = tempfile.mkdtemp(prefix="perdure-report-")
    os.environ.setdefault("PERDURE_DATABASE_URL", f"sqlite:///{_HOME}/perdure.db")
    os.environ.setdefault("PERDURE_BLOB_URL", f"file://{_HOME}/blobs")

app = perdure.App("reports")
PARIS = ZoneInfo("Europe/Paris")


@app.step
async def gather_figures(day: str) -> dict[str, int]:
    return {"orders": 42, "refunds": 3}  # a database query, recorded once


@app.step
async def send_report(day: str, figures: dict[str, int]) -> str:
    return f"report for {day}: {figures['orders']} orders, {figures['refunds']} refunds"


@app.task(schedule=perdure.Cron("0 9 * * 1-5", tz="Europe/Paris"))
async def daily_report(scheduled_at: dt.datetime) -> str:
    day = scheduled_at.astimezone(PARIS).date().isoformat()
    return await send_report(day, await gather_figures(day))


async def main() -> None:
    schedule = await app.schedules.create("daily_report", cron="* * * * * *", key="demo")
    print(f"schedule {schedule.key}: {schedule.cron} ({schedule.tz})")
    worker = app.worker(concurrency=2)
    running = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        done: list[str] = []
        while len(done) < 3:  # three ticks of the demo schedule
            await asyncio.sleep(0.2)
            runs = await app.admin.list_runs(status=perdure.RunStatus.COMPLETED)
            done = sorted(r.id for r in runs)
        await app.schedules.delete("demo")
        for run_id in done[:3]:
            print(await (await app.handle(run_id)).result(timeout=10))
        weekday = next(s for s in await app.schedules.list() if s.key == "daily_report")
        when = dt.datetime.fromtimestamp(weekday.next_at, PARIS)
        print(f"next weekday report: {when:%A %Y-%m-%d %H:%M} in Paris")
    finally:
        worker.stop()
        await running
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())
