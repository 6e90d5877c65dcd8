"""What every `perdure` command shares: options, loading the App, running on its admin API,
printing."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from perdure.admin import Admin
from perdure.app import App
from perdure.config import DEFAULT_BLOB_URL, DEFAULT_DATABASE_URL
from perdure.errors import PerdureError

T = TypeVar("T")

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


RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="PERDURE_REDIS_URL",
        help="The Redis tier (redis://host:6379/0): wake-ups between processes and worker "
        "presence (PostgreSQL only; extra redis).",
        show_default=False,
    ),
]


AppNameOpt = Annotated[
    str | None,
    typer.Option("--app-name", help="App name (instead of --app MODULE:APP).", show_default=False),
]


def named_app(app: str | None, name: str | None) -> str | None:
    """The app of --app-name NAME, else of --app MODULE:APP, else None (every app)."""
    if name is not None:
        return name
    return None if app is None else load_app(app).name


def one_app(app: str | None, name: str | None) -> str:
    """named_app() for a command that acts on one app's things: one of the two is needed."""
    found = named_app(app, name)
    if found is None:
        raise typer.BadParameter("give --app MODULE:APP or --app-name NAME")
    return found


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


def app_for(app: str | None, database: str | None, blobs: str | None) -> App:
    """The App of --app MODULE:APP, else one on --database and --blobs."""
    if app is not None:
        return load_app(app)
    return App("perdure", database=database, blobs=blobs)


def on_admin(
    app: str | None,
    database: str | None,
    blobs: str | None,
    action: Callable[[Admin], Awaitable[T]],
) -> T:
    """Run `action` on the App's admin API, then close the App; PerdureErrors become a clean
    exit 1."""
    target = app_for(app, database, blobs)

    async def go() -> T:
        try:
            return await action(target.admin)
        finally:
            await target.close()

    return run_sync(go())


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except PerdureError as exc:
        if "--json" in sys.argv[1:]:  # a machine reads this: the error as JSON too
            print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
        else:
            console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def time_text(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]
