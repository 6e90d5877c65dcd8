"""`perdure queues`: list queues with their load, change their limits, pause and resume them."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from perdure.cli.common import (
    AppNameOpt,
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    console,
    named_app,
    on_admin,
    one_app,
)
from perdure.views import queue_dict

queues_cli = typer.Typer(help="Inspect and change queues.", no_args_is_help=True)


@queues_cli.command("list")
def queues_list(
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queues with their limits, runs running and queued, and the oldest wait."""
    name = named_app(app, app_name)
    found = on_admin(app, database, blobs, lambda admin: admin.queues(name))
    if as_json:
        print(json.dumps([queue_dict(q) for q in found]))
        return
    table = Table("app", "queue", "limit", "per key", "rate", "running", "queued", "waiting")
    now = time.time()
    for q in found:
        c = q.config
        table.add_row(
            q.app,
            c.name + (" [yellow](paused)[/yellow]" if c.paused else ""),
            "-" if c.concurrency is None else str(c.concurrency),
            "-" if c.key_concurrency is None else str(c.key_concurrency),
            "-" if c.rate_limit is None else f"{c.rate_limit}/{c.rate_period:g}s",
            str(q.running),
            str(q.queued),
            "" if q.oldest_waiting_at is None else f"{max(0.0, now - q.oldest_waiting_at):.1f}s",
        )
    console.print(table)


def _change_queue(
    queue: str,
    app: str | None,
    app_name: str | None,
    database: str | None,
    blobs: str | None,
    as_json: bool,
    **change: Any,
) -> None:
    name = one_app(app, app_name)
    config = on_admin(app, database, blobs, lambda admin: admin.set_queue(name, queue, **change))
    if as_json:
        print(json.dumps({"app": name, **msgspec.to_builtins(config)}))
        return
    limit = "no limit" if config.concurrency is None else f"concurrency {config.concurrency}"
    console.print(f"queue {queue} of {name}: {limit}" + (", paused" if config.paused else ""))


@queues_cli.command("set")
def queues_set(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Runs of the queue running at once.")
    ] = None,
    no_limit: Annotated[bool, typer.Option("--no-limit", help="Remove the limit.")] = False,
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a queue's limit at run time; workers apply it at their next claim, and code
    declarations no longer change it."""
    if concurrency is None and not no_limit:
        raise typer.BadParameter("give --concurrency N or --no-limit")
    _change_queue(
        queue, app, app_name, database, blobs, as_json, concurrency=concurrency, unlimited=no_limit
    )


@queues_cli.command("pause")
def queues_pause(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start no more runs of the queue (running ones go on; sleeping ones wait)."""
    _change_queue(queue, app, app_name, database, blobs, as_json, paused=True)


@queues_cli.command("resume")
def queues_resume(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start runs of a paused queue again."""
    _change_queue(queue, app, app_name, database, blobs, as_json, paused=False)
