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
from perdure.views import duration_text, stats_dict


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
    expired in the window; run duration percentiles (start to end) over the window."""
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
    table = Table("task", *statuses, "p50", "p95", "p99", title=f"runs, last {since}")
    for t in found.tasks:
        counts = {**t.active, **t.ended}
        table.add_row(
            t.task,
            *(str(counts.get(s, 0) or "") for s in statuses),
            *(duration_text(t.durations.get(p)) for p in (50, 95, 99)),
        )
    console.print(table)
