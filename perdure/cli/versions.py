"""`perdure replay-check` and `perdure runs migrate`: recorded journals against today's code."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from perdure.admin import Admin
from perdure.cli.common import BlobOpt, DbOpt, JsonOpt, console, load_app, on_admin
from perdure.cli.runs import DryRunOpt, runs_cli
from perdure.records import ReplayVerdict


def replay_check(
    app: Annotated[str, typer.Argument(help="MODULE:APP: the code to check the journals against.")],
    runs: Annotated[
        int, typer.Option("--runs", min=1, help="The latest this many runs with a journal.")
    ] = 100,
    task: Annotated[str | None, typer.Option("--task", help="Only runs of this task.")] = None,
    run: Annotated[
        list[str] | None, typer.Option("--run", help="This run (repeatable) instead.")
    ] = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay recorded journals against the code of MODULE:APP without running any step or
    writing anything, and report each run whose journal the code no longer follows (the run,
    the position, what the code calls there and what was recorded). Exit code 1 if any: put
    it in CI before a deploy."""

    def show(verdict: ReplayVerdict) -> None:
        if not as_json and not verdict.ok:
            console.print(f"[red]{verdict.run_id}[/red] ({verdict.task}): {verdict.message}")

    verdicts = on_admin(
        app,
        database,
        blobs,
        lambda admin: admin.check_replays(runs=runs, task=task, run_ids=run or (), progress=show),
    )
    failed = [v for v in verdicts if not v.ok]
    if as_json:
        print(json.dumps({"checked": len(verdicts), "failed": [_verdict(v) for v in failed]}))
    elif failed:
        table = Table("run", "task", "position", "the code calls", "the journal recorded")
        for v in failed:
            table.add_row(v.run_id, v.task, str(v.seq or ""), v.called or "(nothing)", v.recorded)
        console.print(table)
        console.print(f"[red]{len(failed)} of {len(verdicts)} run(s) would not replay[/red]")
    else:
        console.print(f"{len(verdicts)} run(s) replay against this code")
    if failed:
        raise typer.Exit(1)


@runs_cli.command("migrate")
def runs_migrate(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="Runs to move (default: every stranded run).")
    ] = None,
    app: Annotated[str, typer.Option("--app", help="MODULE:APP: the code to move them to.")] = "",
    to: Annotated[
        str, typer.Option("--to", help="The version to move them to: that of MODULE:APP.")
    ] = "",
    dry_run: DryRunOpt = False,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move queued or waiting runs to another version of the code: each only if its journal
    replays against that code (see replay-check); workers of that version then resume it."""
    if not app or not to:
        raise typer.BadParameter("--app MODULE:APP and --to VERSION are required")
    version = load_app(app).version
    if version != to:
        raise typer.BadParameter(
            f"{app} is version {version!r}, not {to!r}: run this with the code of the version "
            "the runs move to (PERDURE_VERSION, or App(version=...))"
        )

    async def go(admin: Admin) -> list[tuple[ReplayVerdict, bool]]:
        chosen = list(run_ids or [])
        if not chosen:
            chosen = [run.id for run in await admin.stranded(limit=100_000)]
        return await admin.migrate_runs(chosen, dry_run=dry_run)

    results = on_admin(app, database, blobs, go)
    moved = [v.run_id for v, done in results if done]
    refused = [v for v, _done in results if not v.ok]
    if as_json:
        print(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "to": to,
                    "moved": moved,
                    "would_move": [v.run_id for v, _ in results if v.ok] if dry_run else [],
                    "refused": [_verdict(v) for v in refused],
                }
            )
        )
    else:
        for v in refused:
            console.print(f"[red]{v.run_id}[/red] stays: {v.message}")
        if dry_run:
            console.print(f"would move {sum(v.ok for v, _ in results)} run(s) to {to}")
        else:
            console.print(f"moved {len(moved)} run(s) to {to}")
    if refused:
        raise typer.Exit(1)


def _verdict(v: ReplayVerdict) -> dict[str, object]:
    return {
        "run_id": v.run_id,
        "task": v.task,
        "seq": v.seq,
        "called": v.called,
        "recorded": v.recorded,
        "message": v.message,
    }
