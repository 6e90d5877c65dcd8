"""`perdure runs`: list, show, read the logs of, cancel, replay and purge runs (one, or every run
that filters choose)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from perdure.admin import MIN_GRACE, Admin, PurgeReport, parse_age
from perdure.cli.common import (
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    console,
    load_app,
    on_admin,
    time_text,
)
from perdure.records import RunStatus
from perdure.views import decoded, details_dict, run_dict, value_json

runs_cli = typer.Typer(help="Inspect and control runs.", no_args_is_help=True)

TaskFilter = Annotated[str | None, typer.Option("--task", help="Runs of this task.")]
StatusFilter = Annotated[RunStatus | None, typer.Option("--status", help="Runs in this status.")]
SinceFilter = Annotated[
    str | None, typer.Option("--since", help="Runs created within this long: 1h, 30m, 7d.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only count the runs it would act on.")]


@runs_cli.command("list")
def runs_list(
    status: Annotated[RunStatus | None, typer.Option(help="Only runs in this status.")] = None,
    task: Annotated[str | None, typer.Option(help="Only runs of this task.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only runs with this tag.")] = None,
    stranded: Annotated[
        bool,
        typer.Option(
            "--stranded",
            help="Only runs pinned to a version of the code that no live worker runs.",
        ),
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 50,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    if stranded and (status or task or tag):
        raise typer.BadParameter("--stranded takes no other filter")
    found = on_admin(
        app,
        database,
        blobs,
        lambda admin: (
            admin.stranded(limit=limit, every_app=app is None)
            if stranded
            else admin.list_runs(status=status, task=task, tag=tag, limit=limit)
        ),
    )
    if as_json:
        print(json.dumps([run_dict(r) for r in found]))
        return
    table = Table("id", "task", "status", "attempt", "version", "created", "finished", "note")
    for r in found:
        table.add_row(
            r.id,
            r.task,
            str(r.status),
            str(r.attempt),
            r.version or "",
            time_text(r.created_at),
            time_text(r.finished_at),
            r.note or "",
        )
    console.print(table)


@runs_cli.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[
        int,
        typer.Option(min=0, help="Journal entries in the table: the first and last half (0: all)."),
    ] = 200,
) -> None:
    """Show a run: its steps with timing, attempts, errors with tracebacks, stored sizes."""

    details = on_admin(app, database, blobs, lambda admin: admin.run_details(run_id))
    run, attempts, unreadable = details.run, details.attempts, details.unreadable
    out = details_dict(details)
    if as_json:
        print(json.dumps(out))
        return
    entries: list[dict[str, Any]] = out["journal"]
    stored, waiting = out["stored_size"], out["waiting_for"]
    console.print(f"[bold]run {run.id}[/bold]  task {run.task}  [bold]{run.status}[/bold]")
    console.print(
        f"stored {stored:,} bytes  attempt {run.attempt}  created {time_text(run.created_at)}  "
        f"started {time_text(run.started_at)}  finished {time_text(run.finished_at)}"
    )
    if run.note:
        console.print(f"[yellow]note:[/yellow] {run.note}")
    if waiting is not None:
        console.print(f"[cyan]waiting for:[/cyan] {_waiting_text(waiting)}", highlight=False)
    if run.tags:
        console.print(f"tags: {', '.join(run.tags)}", highlight=False)
    if run.version or run.replay_of:
        replay = f"  replay of {run.replay_of}" if run.replay_of else ""
        console.print(f"version {run.version or '(not pinned yet)'}{replay}", highlight=False)
    if "metadata" in out:
        console.print(f"metadata: {json.dumps(out['metadata'])}", highlight=False)
    if unreadable is not None:
        console.print(
            f"[yellow]values unreadable here:[/yellow] {type(unreadable).__name__}: {unreadable}",
            markup=True,
            highlight=False,
        )
    table = Table("seq", "kind", "name", "status", "start", "ms", "attempts", "stored bytes")
    shown = entries
    if limit and len(entries) > limit:
        shown = entries[: limit // 2] + entries[len(entries) - (limit - limit // 2) :]
    for index, e in enumerate(shown):
        if shown is not entries and index == limit // 2:
            table.add_row("…", f"{len(entries) - limit:,} more (--limit 0 shows all)", *[""] * 6)
        size = f"{e['stored_size']}" + (" (blob)" if e["in_blob_store"] else "")
        table.add_row(
            str(e["seq"]),
            e["kind"],
            e["name"],
            e["status"],
            time_text(e["started_at"]),
            f"{e['duration_ms']:.1f}",
            str(e["attempts"]),
            size,
        )
    console.print(table)
    failed = [a for a in attempts if a.error is not None]
    if limit and len(failed) > limit:
        console.print(f"{len(failed) - limit:,} earlier failed attempt(s) not shown")
        failed = failed[-limit:]
    for a in failed:
        where = f"step #{a.seq}" if a.seq else "task"
        assert a.error is not None
        console.print(
            f"[red]{where} attempt {a.attempt} (run attempt {a.run_attempt}) at "
            f"{time_text(a.started_at)}: {a.error.type}: {a.error.message}[/red]"
        )
        console.print(a.error.traceback.rstrip(), markup=False, highlight=False)
    if run.result is not None and unreadable is None:
        console.print("result:")
        console.print_json(data=value_json(decoded(run.result.data, run.result.codec)))


@runs_cli.command("cancel")
def runs_cancel(
    run_id: Annotated[str | None, typer.Argument(help="Run id (or choose runs by filter).")] = None,
    task: TaskFilter = None,
    status: StatusFilter = None,
    since: SinceFilter = None,
    dry_run: DryRunOpt = False,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run (at once if queued or sleeping; a running run stops at its next await), or
    every run that --task, --status and --since choose (--dry-run: count them only)."""
    if run_id is not None:
        if task or status or since:
            raise typer.BadParameter("give a run id or filters, not both")
        done = on_admin(app, database, blobs, lambda admin: admin.cancel_run(run_id))
        if as_json:
            print(json.dumps({"id": run_id, "status": str(done)}))
        else:
            console.print(f"run {run_id}: {done}")
        return
    age = _filters(task, status, since)

    async def go(admin: Admin) -> list[str]:
        chosen = await admin.find_runs(task=task, status=status, since=age)
        chosen = [run for run in chosen if not run.status.terminal]
        if not dry_run:
            for run in chosen:
                await admin.cancel_run(run.id)
        return [run.id for run in chosen]

    ids = on_admin(app, database, blobs, go)
    _bulk_report("cancel", ids, dry_run, as_json)


@runs_cli.command("logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print new lines as they come, until it ends.")
    ] = False,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The lines logged inside a run (any logger, its body and its steps), in order, with the
    step each came from; secret values redacted. --json: one JSON object per line."""

    def show(position: int, line: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps({"position": position, **line}), flush=True)
            return
        where = f" [{line['step']} #{line['seq']}]" if "step" in line else ""
        if line.get("attempt", 1) > 1:
            where = where[:-1] + f" attempt {line['attempt']}]"
        console.print(
            f"{time_text(line['at'])} {line['level']:<7} {line['logger']}{where}: "
            f"{line['message']}",
            markup=False,
            highlight=False,
        )
        if "traceback" in line:
            console.print(line["traceback"].rstrip(), markup=False, highlight=False)

    async def go(admin: Admin) -> None:
        after = 0
        while True:  # every line kept so far, a page at a time
            page = await admin.run_logs(run_id, after=after)
            for position, line in page:
                show(position, line)
                after = position
            if not page:
                break
        if follow:
            async for position, line in admin.follow_logs(run_id, after=after):
                show(position, line)

    on_admin(app, database, blobs, go)


@runs_cli.command("replay")
def runs_replay(
    run_id: Annotated[str | None, typer.Argument(help="Run id (or choose runs by filter).")] = None,
    app: Annotated[str, typer.Option("--app", help="MODULE:APP that defines the run's task.")] = "",
    from_step: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Reuse the results recorded before this journal position (runs show lists "
            "them) and run from it on.",
        ),
    ] = None,
    task: TaskFilter = None,
    status: StatusFilter = None,
    since: SinceFilter = None,
    dry_run: DryRunOpt = False,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a new run of the run's task with the same arguments, priority and tags, linked to
    it (after a fix, say); the run itself is left as it is. --from-step N reuses what the run
    recorded before position N. With filters instead of a run id: replay every run they choose
    (--dry-run: count them only)."""
    if not app:
        raise typer.BadParameter("--app MODULE:APP is required: the new runs run its code")
    if run_id is not None:
        if task or status or since:
            raise typer.BadParameter("give a run id or filters, not both")
        handle = on_admin(
            app, database, blobs, lambda admin: admin.replay(run_id, from_step=from_step)
        )
        if as_json:
            print(json.dumps({"id": handle.id, "replay_of": run_id}))
        else:
            console.print(f"run {handle.id} started, replaying {run_id}")
        return
    if from_step is not None:
        raise typer.BadParameter("--from-step applies to one run")
    age = _filters(task, status, since)

    async def go(admin: Admin) -> list[str]:
        chosen = [run.id for run in await admin.find_runs(task=task, status=status, since=age)]
        if not dry_run:
            for chosen_id in chosen:
                await admin.replay(chosen_id)
        return chosen

    ids = on_admin(app, database, blobs, go)
    _bulk_report("replay", ids, dry_run, as_json)


@runs_cli.command("purge")
def runs_purge(
    older_than: Annotated[
        str, typer.Option(help="Runs that ended more than this long ago: 30d, 12h, 90m, 2w.")
    ],
    status: Annotated[
        list[RunStatus] | None,
        typer.Option(help="Only runs in this status (repeatable; default: every ended one)."),
    ] = None,
    grace: Annotated[
        str, typer.Option(help="Keep unreferenced blobs written more recently than this.")
    ] = "1h",
    dry_run: Annotated[bool, typer.Option(help="Only count the runs it would delete.")] = False,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete old runs with their journals, then the blobs no run references any more (safe
    while workers run)."""
    try:
        age, grace_s = parse_age(older_than), parse_age(grace)
        if grace_s < MIN_GRACE:
            raise ValueError(f"grace must be at least {MIN_GRACE / 60:.0f}m")
        statuses = status or [s for s in RunStatus if s.terminal]
        if any(not s.terminal for s in statuses):
            raise ValueError(
                "only ended runs (completed, failed, cancelled, expired) can be purged"
            )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    app_name = None if app is None else load_app(app).name

    def show(report: PurgeReport) -> None:
        if not as_json and console.is_terminal:
            console.print(f"  {report.runs} run(s), {report.blobs} blob(s) deleted", end="\r")

    report = on_admin(
        app,
        database,
        blobs,
        lambda admin: admin.purge(
            older_than=age,
            statuses=statuses,
            app=app_name,
            grace=grace_s,
            dry_run=dry_run,
            progress=show,
        ),
    )
    if as_json:
        print(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "runs": report.runs,
                    "blobs": report.blobs,
                    "partial_writes": report.partial,
                }
            )
        )
    elif dry_run:
        console.print(f"would delete {report.runs} run(s)")
    else:
        console.print(
            f"deleted {report.runs} run(s) and {report.blobs} unreferenced blob(s)"
            + (f", and {report.partial} partial blob write(s)" if report.partial else "")
        )


def _filters(task: str | None, status: RunStatus | None, since: str | None) -> float | None:
    """Check a bulk action's filters; the age of --since in seconds."""
    if not (task or status or since):
        raise typer.BadParameter(
            "give a run id, or choose runs with --task, --status and/or --since"
        )
    try:
        return None if since is None else parse_age(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _bulk_report(action: str, ids: list[str], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"dry_run": dry_run, "count": len(ids), "runs": ids}))
    elif dry_run:
        console.print(f"would {action} {len(ids)} run(s)")
    else:
        done = {"cancel": "cancelled", "replay": "replayed"}[action]
        console.print(f"{done} {len(ids)} run(s)")


def _waiting_text(waiting: dict[str, Any]) -> str:
    kind, until = waiting["kind"], waiting.get("until")
    what: str = {
        "token": f"token {waiting.get('key')}",
        "event": f"event {waiting.get('key')!r}",
        "message": f"a message on {waiting.get('key')!r}",
        "sleep": "its sleep to end",
        "children": "its child runs to end",
        "retry": "its retry's backoff to end",
    }.get(kind, kind)
    if "match" in waiting:
        what += f" matching {json.dumps(waiting['match'])}"
    if until is None:
        return what + ", with no timeout"
    return (
        what + f", until {dt.datetime.fromtimestamp(until).isoformat(sep=' ', timespec='seconds')}"
    )
