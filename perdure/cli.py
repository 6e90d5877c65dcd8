"""The `perdure` command: a thin shell over the App and Store APIs. Every command takes --json."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from perdure import logs, serde
from perdure.app import App
from perdure.blobs import open_blobs
from perdure.blobs.base import REFRESH_AFTER
from perdure.config import DEFAULT_BLOB_URL, DEFAULT_DATABASE_URL
from perdure.crypto import Keyring, new_key
from perdure.errors import (
    ConfigurationError,
    CorruptJournal,
    EncryptionError,
    PerdureError,
    StoreRefused,
)
from perdure.records import Attempt, JournalEntry, QueueStats, RunRecord, RunStatus
from perdure.retention import PurgeReport, parse_age, purge
from perdure.rotation import RotationReport, rotate
from perdure.store import open_store
from perdure.store.base import Store

T = TypeVar("T")

cli = typer.Typer(help="perdure: durable execution for Python.", no_args_is_help=True)
runs_cli = typer.Typer(help="Inspect and control runs.", no_args_is_help=True)
cli.add_typer(runs_cli, name="runs")
queues_cli = typer.Typer(help="Inspect and change queues.", no_args_is_help=True)
encryption_cli = typer.Typer(help="Encryption at rest: keys and rotation.", no_args_is_help=True)
cli.add_typer(encryption_cli, name="encryption")
cli.add_typer(queues_cli, name="queues")
console = Console()
if not console.is_terminal:
    console = Console(width=max(console.width, 140))

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
AppOpt = Annotated[
    str | None, typer.Option("--app", help="MODULE:APP whose database to use.", show_default=False)
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database", envvar="PERDURE_DATABASE_URL", help=f"Database URL [{DEFAULT_DATABASE_URL}]"
    ),
]
BlobOpt = Annotated[
    str | None,
    typer.Option("--blobs", envvar="PERDURE_BLOB_URL", help=f"Blob URL [{DEFAULT_BLOB_URL}]"),
]


def load_app(spec: str) -> App:
    """Import MODULE:APP (the current directory is on the path)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise typer.BadParameter(f"{spec!r} is not MODULE:APP (e.g. shop.tasks:app)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise typer.BadParameter(
            f"cannot import {module_name!r} ({exc}); run from the folder that holds it, or put "
            "that folder on PYTHONPATH"
        ) from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise typer.BadParameter(f"{spec!r} is not a perdure.App (found {type(app).__name__})")
    return app


def _store(app: str | None, database: str | None, blobs: str | None) -> Store:
    if app is not None:
        return load_app(app).store
    keyring = Keyring.from_env()
    return open_store(
        database or DEFAULT_DATABASE_URL,
        blobs=open_blobs(blobs or DEFAULT_BLOB_URL, keyring=keyring),
        keyring=keyring,
    )


def _on_store(
    app: str | None,
    database: str | None,
    blobs: str | None,
    action: Callable[[Store], Awaitable[T]],
) -> T:
    """Open the store, run `action` on it, close it; PerdureErrors become a clean exit 1."""
    store = _store(app, database, blobs)

    async def go() -> T:
        try:
            return await action(store)
        finally:
            await store.close()

    return _run(go())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except PerdureError as exc:
        if "--json" in sys.argv[1:]:  # a machine reads this: the error as JSON too
            print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
        else:
            console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _time(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def _value_json(value: Any) -> Any:
    return json.loads(msgspec.json.encode(value, enc_hook=repr))


def _decoded(data: bytes, codec: str) -> Any:
    try:
        return serde.decode(data, codec=serde.Codec(codec), what="value")
    except PerdureError as exc:
        return f"<{exc}>"


def _run_dict(run: RunRecord, *, values: bool = True) -> dict[str, Any]:
    out = {
        "id": run.id,
        "app": run.app,
        "task": run.task,
        "queue": run.queue,
        "status": str(run.status),
        "attempt": run.attempt,
        "worker_id": run.worker_id,
        "idempotency_key": run.idempotency_key,
        "note": run.note,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "available_at": run.available_at,
        "error": None if run.error is None else msgspec.to_builtins(run.error),
    }
    if run.result is not None:
        if values:
            out["result"] = _value_json(_decoded(run.result.data, run.result.codec))
        out["result_size"] = {"raw": run.result.raw_size, "stored": run.result.stored_size}
    if run.args is not None and values:
        out["args"] = _value_json(_decoded(run.args.data, run.args.codec))
    return out


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="MODULE:APP, e.g. shop.tasks:app")],
    concurrency: Annotated[int | None, typer.Option(help="Runs executed at once.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="Log JSON lines to stderr.")] = False,
) -> None:
    """Run a worker until SIGTERM/SIGINT (then drain: finish or release every run)."""
    try:
        logs.configure(log_level, as_json=as_json)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    the_app = load_app(app)

    async def go() -> None:
        try:
            await the_app.run_worker(concurrency=concurrency)
        finally:
            await the_app.close()

    code = 1
    # not asyncio.run(): at exit it would wait for the step threads, see below
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(go())
        code = 0
    except PerdureError as exc:
        console.print(f"[red]error:[/red] {exc}")
    except Exception:
        traceback.print_exc()
    finally:
        # Every run was finished or released and the store is closed. A sync step still
        # blocked in a thread cannot be interrupted; do not wait for it at interpreter exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@cli.command()
def trigger(
    app: Annotated[str, typer.Argument(help="MODULE:APP")],
    task: Annotated[str, typer.Argument(help="Task name.")],
    args_json: Annotated[
        str, typer.Argument(help="Arguments: a JSON list (positional) or object (keyword).")
    ] = "[]",
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    priority: Annotated[int, typer.Option(help="Higher starts first within its queue.")] = 0,
    delay: Annotated[float | None, typer.Option(help="Start no sooner than in N seconds.")] = None,
    ttl: Annotated[
        float | None, typer.Option(help="Expire if not started within N seconds.")
    ] = None,
    concurrency_key: Annotated[
        str | None, typer.Option(help="Concurrency key (per-key limits, fairness).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Trigger a run of TASK."""
    the_app = load_app(app)
    try:
        parsed = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"ARGS_JSON is not JSON: {exc}") from None
    args, kwargs = (parsed, {}) if isinstance(parsed, list) else ([], parsed)
    if not isinstance(kwargs, dict):
        raise typer.BadParameter("ARGS_JSON must be a JSON list or object")

    async def go() -> dict[str, Any]:
        try:
            task_obj = the_app.get_task(task)
            options = {
                "idempotency_key": idempotency_key,
                "priority": priority or None,
                "delay": delay,
                "ttl": ttl,
                "concurrency_key": concurrency_key,
            }
            kwargs.update({k: v for k, v in options.items() if v is not None})
            handle = await task_obj.trigger(*args, **kwargs)
            out: dict[str, Any] = {"id": handle.id}
            if wait:
                out["result"] = _value_json(await handle.result(timeout))
            out["status"] = str(await handle.status())
            return out
        finally:
            await the_app.close()

    out = _run(go())
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"run [bold]{out['id']}[/bold] {out['status']}")
        if "result" in out:
            console.print_json(data=out["result"])


@runs_cli.command("list")
def runs_list(
    status: Annotated[RunStatus | None, typer.Option(help="Only runs in this status.")] = None,
    task: Annotated[str | None, typer.Option(help="Only runs of this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 50,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    found = _on_store(
        app, database, blobs, lambda store: store.list_runs(status=status, task=task, limit=limit)
    )
    if as_json:
        print(json.dumps([_run_dict(r) for r in found]))
        return
    table = Table("id", "task", "status", "attempt", "created", "finished", "note")
    for r in found:
        table.add_row(
            r.id,
            r.task,
            str(r.status),
            str(r.attempt),
            _time(r.created_at),
            _time(r.finished_at),
            r.note or "",
        )
    console.print(table)


def _entry_dict(entry: JournalEntry, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "kind": str(entry.kind),
        "name": entry.name,
        "status": str(entry.status),
        "started_at": entry.started_at,
        "finished_at": entry.finished_at,
        "duration_ms": round((entry.finished_at - entry.started_at) * 1000, 3),
        "attempts": len(attempts),
        "raw_size": entry.value.raw_size if entry.value else 0,
        "stored_size": entry.value.stored_size if entry.value else 0,
        "in_blob_store": bool(entry.value and entry.value.blob_key),
        "error": None if entry.error is None else msgspec.to_builtins(entry.error),
    }


def _attempt_dict(a: Attempt) -> dict[str, Any]:
    return {**dataclasses.asdict(a), "error": msgspec.to_builtins(a.error)}


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

    async def load(
        store: Store,
    ) -> tuple[RunRecord, list[JournalEntry], list[Attempt], Exception | None]:
        unreadable = None
        try:
            run = await store.get_run(run_id)
        except (CorruptJournal, EncryptionError, StoreRefused) as exc:  # shown all the same
            run, unreadable = await store.get_run(run_id, values=False), exc
        # the steps' values are not shown: their sizes need no blob store and no key
        journal = await store.load_journal(run_id, values=False)
        return run, journal, await store.load_attempts(run_id), unreadable

    run, journal, attempts, unreadable = _on_store(app, database, blobs, load)
    by_seq: dict[int, list[Attempt]] = {}
    for attempt in attempts:
        by_seq.setdefault(attempt.seq, []).append(attempt)
    entries = [_entry_dict(e, by_seq.get(e.seq, [])) for e in journal]
    stored = sum(e["stored_size"] for e in entries) + (run.result.stored_size if run.result else 0)
    if as_json:
        out = _run_dict(run, values=unreadable is None)
        out["stored_size"] = stored
        out["journal"] = entries
        out["attempts"] = [_attempt_dict(a) for a in attempts]
        if unreadable is not None:
            out["unreadable"] = f"{type(unreadable).__name__}: {unreadable}"
        print(json.dumps(out))
        return
    console.print(f"[bold]run {run.id}[/bold]  task {run.task}  [bold]{run.status}[/bold]")
    console.print(
        f"stored {stored:,} bytes  attempt {run.attempt}  created {_time(run.created_at)}  started "
        f"{_time(run.started_at)}  finished {_time(run.finished_at)}"
    )
    if run.note:
        console.print(f"[yellow]note:[/yellow] {run.note}")
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
            _time(e["started_at"]),
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
            f"{_time(a.started_at)}: {a.error.type}: {a.error.message}[/red]"
        )
        console.print(a.error.traceback.rstrip(), markup=False, highlight=False)
    if run.result is not None and unreadable is None:
        console.print("result:")
        console.print_json(data=_value_json(_decoded(run.result.data, run.result.codec)))


@runs_cli.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run (at once if queued or sleeping; a running run stops at its next await)."""
    status = _on_store(app, database, blobs, lambda store: store.cancel_run(run_id))
    if as_json:
        print(json.dumps({"id": run_id, "status": str(status)}))
    else:
        console.print(f"run {run_id}: {status}")


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
        if grace_s < 2 * REFRESH_AFTER:
            raise ValueError(f"grace must be at least {2 * REFRESH_AFTER / 60:.0f}m")
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

    report = _on_store(
        app,
        database,
        blobs,
        lambda store: purge(
            store,
            store.blobs,
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


@encryption_cli.command("new-key")
def encryption_new_key() -> None:
    """Print a new random key (base64) for PERDURE_ENCRYPTION_KEY."""
    print(new_key())


@encryption_cli.command("rotate")
def encryption_rotate(
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rewrite every stored value and blob under PERDURE_ENCRYPTION_KEY; values under the
    keys in PERDURE_ENCRYPTION_OLD_KEYS are read and re-encrypted (safe while workers run)."""

    def show(report: RotationReport) -> None:
        if not as_json and console.is_terminal:
            console.print(
                f"  {report.values} value(s), {report.blobs}/{report.blobs_seen} blob(s)", end="\r"
            )

    report = _on_store(
        app, database, blobs, lambda store: rotate(store, store.blobs, progress=show)
    )
    if as_json:
        print(json.dumps({"values": report.values, "blobs": report.blobs}))
    else:
        console.print(
            f"rewrote {report.values} value(s) and {report.blobs} of {report.blobs_seen} blob(s)"
        )


AppNameOpt = Annotated[
    str | None,
    typer.Option("--app-name", help="App name (instead of --app MODULE:APP).", show_default=False),
]


def _app_name(app: str | None, app_name: str | None) -> str | None:
    if app_name is not None:
        return app_name
    return None if app is None else load_app(app).name


def _queue_dict(stats: QueueStats) -> dict[str, Any]:
    config = stats.config
    return {
        "app": stats.app,
        "name": config.name,
        "concurrency": config.concurrency,
        "key_concurrency": config.key_concurrency,
        "rate_limit": None
        if config.rate_limit is None
        else {"starts": config.rate_limit, "per": config.rate_period, "by_key": config.rate_by_key},
        "strategy": config.strategy,
        "paused": config.paused,
        "overridden": stats.overridden,
        "running": stats.running,
        "queued": stats.queued,
        "oldest_waiting_at": stats.oldest_waiting_at,
    }


@queues_cli.command("list")
def queues_list(
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queues with their limits, runs running and queued, and the oldest wait."""
    name = _app_name(app, app_name)
    found = _on_store(app, database, blobs, lambda store: store.queue_stats(name))
    if as_json:
        print(json.dumps([_queue_dict(q) for q in found]))
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
    name = _app_name(app, app_name)
    if name is None:
        raise typer.BadParameter("give --app MODULE:APP or --app-name NAME")
    config = _on_store(app, database, blobs, lambda store: store.set_queue(name, queue, **change))
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


@cli.command()
def migrate(
    dry_run: Annotated[bool, typer.Option(help="Only list what would be applied.")] = False,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply the database migrations this perdure needs (or list them with --dry-run)."""
    applied = _on_store(app, database, blobs, lambda store: store.migrate(dry_run=dry_run))
    if as_json:
        print(json.dumps({"dry_run": dry_run, "migrations": applied}))
    elif not applied:
        console.print("the schema is up to date")
    else:
        verb = "would apply" if dry_run else "applied"
        for name in applied:
            console.print(f"{verb} {name}")


def main() -> None:
    """Entry point of the `perdure` command."""
    cli()
