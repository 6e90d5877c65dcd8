"""An app for schedule tests with real processes: a task on an every-second schedule that
appends its tick time and its process id to $CRASH_LOG."""

from __future__ import annotations

import datetime as dt
import os

import perdure

app = perdure.App("cron")


@app.task(name="every_second", schedule=perdure.Cron("* * * * * *"))
def every_second(scheduled_at: dt.datetime) -> str:
    with open(os.environ["CRASH_LOG"], "a") as f:
        f.write(f"{scheduled_at.timestamp():.3f} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return scheduled_at.isoformat()
