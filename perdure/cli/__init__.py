"""The `perdure` command: a thin shell over the App and its admin API. Every command takes
--json."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from typing import Annotated, Any

import typer

from perdure import logs, metrics
from perdure.admin import RotationReport
from perdure.app import App
from perdure.cli.common import (
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    RedisOpt,
    console,
    load_app,
    on_admin,
    run_sync,
)
from perdure.cli.dev import dev
from perdure.cli.queues import queues_cli
from perdure.cli.runs import runs_cli
from perdure.cli.schedules import schedules_cli
from perdure.cli.server import api_keys_cli, serve
from perdure.cli.stats import stats
from perdure.cli.versions import replay_check
from perdure.cli.waits import events_cli, tokens_cli
from perdure.crypto import new_key
from perdure.errors import ConfigurationError, PerdureError
from perdure.health import HealthServer
from perdure.records import QueueStats
from perdure.views import value_json

cli = typer.Typer(help="perdure: durable execution for Python.", no_args_is_help=True)
cli.add_typer(runs_cli, name="runs")
encryption_cli = typer.Typer(help="Encryption at rest: keys and rotation.", no_args_is_help=True)
cli.add_typer(encryption_cli, name="encryption")
cli.add_typer(queues_cli, name="queues")
cli.add_typer(tokens_cli, name="tokens")
cli.add_typer(events_cli, name="events")
cli.add_typer(schedules_cli, name="schedules")
cli.add_typer(api_keys_cli, name="api-keys")
cli.command(name="server")(serve)
cli.command(name="dev")(dev)
cli.command(name="stats")(stats)
cli.command(name="replay-check")(replay_check)


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="MODULE:APP, e.g. shop.tasks:app")],
    concurrency: Annotated[int | None, typer.Option(help="Runs executed at once.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="Log JSON lines to stderr.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics)."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the metrics endpoint (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    health_port: Annotated[
        int | None,
        typer.Option(help="Serve /livez, /readyz and /drain on this port (Kubernetes probes)."),
    ] = None,
    health_host: Annotated[
        str, typer.Option(help="Address of the health endpoints (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    server: Annotated[
        str | None,
        typer.Option(
            envvar="PERDURE_SERVER_URL",
            help="A hybrid worker: reach the store through this perdure server's worker API "
            "(no database URL on this machine).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PERDURE_API_KEY", help="With --server: a key of scope worker."),
    ] = None,
    redis: RedisOpt = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT or GET /drain (then drain: finish or release every
    run)."""
    try:
        logs.configure(log_level, as_json=as_json)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    the_app = load_app(app)
    if server is not None:
        if not api_key:
            raise typer.BadParameter(
                "a hybrid worker needs a key of scope worker", param_hint="--api-key"
            )
        if redis is not None:
            raise typer.BadParameter(
                "a hybrid worker reaches nothing but its server: give Redis to the server",
                param_hint="--redis",
            )
        the_app.server, the_app.api_key = server, api_key
    elif redis is not None:
        the_app.redis_url = redis

    async def go() -> None:
        health = None
        try:
            if metrics_port is not None:
                serve_metrics(the_app, metrics_host, metrics_port)
            the_worker = the_app.worker(concurrency=concurrency)
            if health_port is not None:
                health = HealthServer(
                    the_worker, asyncio.get_running_loop(), health_host, health_port
                )
                health.start()
                console.print(f"health at http://{health_host}:{health.port}/", highlight=False)
            await the_worker.run()
        finally:
            await the_app.close()
            if health is not None:
                health.close()  # (a /drain waiting for the end is answered first)

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


def serve_metrics(app: App, host: str, port: int) -> None:
    """Serve the worker's metrics (and its app's runs by queue) from a thread of their own."""
    try:
        from prometheus_client import start_http_server
    except ImportError:
        console.print("[red]error:[/red] metrics need an extra: pip install 'perdure[metrics]'")
        raise typer.Exit(1) from None
    loop = asyncio.get_running_loop()

    def read() -> list[QueueStats]:  # on the metrics server's thread: the store on the loop
        return asyncio.run_coroutine_threadsafe(app.admin.queues(app.name), loop).result(10)

    registry = metrics.enable()
    metrics.watch_queues(read)
    start_http_server(port, addr=host, registry=registry)
    console.print(f"metrics at http://{host}:{port}/metrics", highlight=False)


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
                out["result"] = value_json(await handle.result(timeout))
            out["status"] = str(await handle.status())
            return out
        finally:
            await the_app.close()

    out = run_sync(go())
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"run [bold]{out['id']}[/bold] {out['status']}")
        if "result" in out:
            console.print_json(data=out["result"])


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

    report = on_admin(app, database, blobs, lambda admin: admin.rotate_encryption(progress=show))
    if as_json:
        print(json.dumps({"values": report.values, "blobs": report.blobs}))
    else:
        console.print(
            f"rewrote {report.values} value(s) and {report.blobs} of {report.blobs_seen} blob(s)"
        )


@cli.command()
def migrate(
    dry_run: Annotated[bool, typer.Option(help="Only list what would be applied.")] = False,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply the database migrations this perdure needs (or list them with --dry-run)."""
    applied = on_admin(app, database, blobs, lambda admin: admin.migrate(dry_run=dry_run))
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
