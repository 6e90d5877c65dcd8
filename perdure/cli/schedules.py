"""`perdure schedules`: list, create, pause, resume and delete cron schedules."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

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
from perdure.records import ScheduleRecord
from perdure.views import schedule_dict

schedules_cli = typer.Typer(
    help="Cron schedules: list, create, pause, resume, delete.", no_args_is_help=True
)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _print_one(s: ScheduleRecord, as_json: bool, what: str) -> None:
    if as_json:
        print(json.dumps(schedule_dict(s)))
        return
    state = "paused" if s.paused else f"next tick {_when(s.next_at)}"
    console.print(f"schedule {s.key} of {s.app} {what}: {s.cron} ({s.tz}), {state}")


@schedules_cli.command("list")
def schedules_list(
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Schedules with their next and last ticks."""
    name = named_app(app, app_name)
    found = on_admin(app, database, blobs, lambda admin: admin.schedules(name))
    if as_json:
        print(json.dumps([schedule_dict(s) for s in found]))
        return
    table = Table("app", "key", "task", "cron", "tz", "next tick", "last tick", "missed")
    for s in found:
        table.add_row(
            s.app,
            s.key + (" [yellow](paused)[/yellow]" if s.paused else ""),
            s.task,
            s.cron,
            s.tz,
            "" if s.paused else _when(s.next_at),
            _when(s.last_tick),
            str(s.missed),
        )
    console.print(table)


@schedules_cli.command("create")
def schedules_create(
    task: Annotated[str, typer.Argument(help="The task each tick runs.")],
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '0 9 * * 1-5'.")],
    app: Annotated[str, typer.Option("--app", help="MODULE:APP whose task it is.")],
    tz: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Paris.")] = "UTC",
    key: Annotated[str | None, typer.Option(help="Its key (default: the task's name).")] = None,
    missed: Annotated[
        str, typer.Option(help="run_once or skip: ticks missed in downtime.")
    ] = "run_once",
    as_json: JsonOpt = False,
) -> None:
    """Create (or replace) a schedule of TASK."""
    made = on_admin(
        app,
        None,
        None,
        lambda admin: admin.create_schedule(task, cron=cron, tz=tz, key=key, missed=missed),
    )
    _print_one(made, as_json, "created")


def _change(
    key: str,
    app: str | None,
    app_name: str | None,
    database: str | None,
    blobs: str | None,
    as_json: bool,
    action: str,
) -> None:
    name = one_app(app, app_name)
    if action == "pause":
        done = on_admin(app, database, blobs, lambda admin: admin.pause_schedule(name, key))
    else:
        done = on_admin(app, database, blobs, lambda admin: admin.resume_schedule(name, key))
    _print_one(done, as_json, action + "d")


@schedules_cli.command("pause")
def schedules_pause(
    key: Annotated[str, typer.Argument(help="Schedule key.")],
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop firing a schedule."""
    _change(key, app, app_name, database, blobs, as_json, "pause")


@schedules_cli.command("resume")
def schedules_resume(
    key: Annotated[str, typer.Argument(help="Schedule key.")],
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fire a paused schedule again, from its next tick (the ticks of the pause are skipped)."""
    _change(key, app, app_name, database, blobs, as_json, "resume")


@schedules_cli.command("delete")
def schedules_delete(
    key: Annotated[str, typer.Argument(help="Schedule key.")],
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a schedule (one declared in code comes back when a worker of that code starts)."""
    name = one_app(app, app_name)
    gone = on_admin(app, database, blobs, lambda admin: admin.delete_schedule(name, key))
    if as_json:
        print(json.dumps({"app": name, "key": key, "deleted": gone}))
        return
    console.print(f"schedule {key} of {name} " + ("deleted" if gone else "not found"))
    if not gone:
        raise typer.Exit(1)
