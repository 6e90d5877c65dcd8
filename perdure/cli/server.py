"""`perdure server` (the REST API) and `perdure api-keys` (the keys it asks for)."""

from __future__ import annotations

import json
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from perdure.cli.common import (
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    RedisOpt,
    console,
    load_app,
    on_admin,
)
from perdure.records import Scope

api_keys_cli = typer.Typer(
    help="API keys of the server: create, list, revoke.", no_args_is_help=True
)


def serve(
    app: Annotated[str, typer.Argument(help="MODULE:APP, e.g. shop.tasks:app")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard at /.")] = True,
    redis: RedisOpt = None,
) -> None:
    """Serve the app's REST API under /api/v1 (OpenAPI at /api/v1/openapi.json) and its
    dashboard at /; every endpoint but /healthz and /readyz needs an API key (perdure api-keys
    create), and the dashboard a sign-in with one."""
    try:
        import uvicorn

        from perdure.server import create_app
    except ImportError:
        console.print("[red]error:[/red] the server needs its extra: pip install 'perdure[server]'")
        raise typer.Exit(1) from None
    the_app = load_app(app)
    if redis is not None:
        the_app.redis_url = redis
    server = create_app(the_app, dashboard=dashboard)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # hybrid workers' sessions end now, without their workers reaped: they reconnect
            the_app.worker_api.close_sessions()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(server, host=host, port=port, log_level=log_level)).run()


@api_keys_cli.command("create")
def api_keys_create(
    scope: Annotated[
        Scope, typer.Option(help="What the key may do: read, trigger, worker or admin.")
    ],
    name: Annotated[str, typer.Option(help="What it is for.")] = "",
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a key; it is printed once and never stored (keep it: it cannot be shown again)."""
    record, key = on_admin(
        app, database, blobs, lambda admin: admin.create_api_key(name=name, scope=scope)
    )
    if as_json:
        print(
            json.dumps(
                {"id": record.id, "name": record.name, "scope": str(record.scope), "key": key}
            )
        )
        return
    console.print(f"API key {record.id} ({record.name}, scope {record.scope}):")
    print(key)


@api_keys_cli.command("list")
def api_keys_list(
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every key: its id, name, scope, and whether it is revoked (never the key)."""
    found = on_admin(app, database, blobs, lambda admin: admin.api_keys())
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": k.id,
                        "name": k.name,
                        "scope": str(k.scope),
                        "created_at": k.created_at,
                        "revoked_at": k.revoked_at,
                    }
                    for k in found
                ]
            )
        )
        return
    table = Table("id", "name", "scope", "revoked")
    for k in found:
        table.add_row(k.id, k.name, str(k.scope), "yes" if k.revoked_at else "")
    console.print(table)


@api_keys_cli.command("revoke")
def api_keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (perdure api-keys list).")],
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: it opens nothing from now on."""
    done = on_admin(app, database, blobs, lambda admin: admin.revoke_api_key(key_id))
    if as_json:
        print(json.dumps({"id": key_id, "revoked": done}))
    else:
        console.print(
            f"API key {key_id} " + ("revoked" if done else "not found, or revoked already")
        )
    if not done:
        raise typer.Exit(1)
