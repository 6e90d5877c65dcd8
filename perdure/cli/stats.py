"""`perdure stats`: how an App's runs are doing, per task."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from perdure.admin import parse_age
from perdure.cli.common import (
    AppNameOpt,
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    console,
    named_app,
    on_admin,
)
from perdure.views import bytes_text, duration_text, stats_dict


def stats(
    since: Annotated[
        str, typer.Option(help="The window: runs that ended in the last 1h, 24h, 7d…")
    ] = "24h",
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per task: runs queued, running and waiting now; runs completed, failed, cancelled and
    expired in the window; run duration percentiles (start to end) over the window; and, from
    the journals of the latest runs, step call percentiles, retries per step call, steps per
    minute and the bytes its runs keep."""
    try:
        window = parse_age(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if window <= 0:
        raise typer.BadParameter("the window must be longer than 0", param_hint="--since")
    name = named_app(app, app_name)
    found = on_admin(
        app, database, blobs, lambda admin: admin.stats(since=window, app=name, task=task)
    )
    if as_json:
        print(json.dumps(stats_dict(found)))
        return
    statuses = ("queued", "running", "waiting", "completed", "failed", "cancelled", "expired")
    runs = Table(title=f"runs, last {since}")
    steps = Table(title=f"steps of the latest runs, last {since}")
    runs.add_column("task", no_wrap=True)
    steps.add_column("task", no_wrap=True)
    for name in (*statuses, "p50", "p95", "p99"):
        runs.add_column(name, justify="right")
    for name in ("runs read", "p50", "p95", "p99", "retries/step", "steps/min", "stored"):
        steps.add_column(name, justify="right")
    for t in found.tasks:
        counts = {**t.active, **t.ended}
        runs.add_row(
            t.task,
            *(str(counts.get(s, 0) or "") for s in statuses),
            *(duration_text(t.durations.get(p)) for p in (50, 95, 99)),
        )
        if t.sampled:
            steps.add_row(
                t.task,
                str(t.sampled),
                *(duration_text(t.step_durations.get(p)) for p in (50, 95, 99)),
                "" if t.retry_rate is None else f"{t.retry_rate:.2f}",
                "" if t.steps_per_minute is None else f"{t.steps_per_minute:.1f}",
                "" if t.stored_bytes is None else bytes_text(t.stored_bytes),
            )
    console.print(runs)
    if steps.rows:
        console.print(steps)
