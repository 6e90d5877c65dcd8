"""`perdure dev MODULE:APP`: a worker, the API and the dashboard in one process on the app's
store (the embedded SQLite file unless configured), restarted when the code changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from perdure.cli.common import console, load_app

LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""Where the dashboard may open without a key."""
SKIPPED = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
"""Folders whose files do not restart the app."""
POLL = 0.5
"""Seconds between looks at the code."""


def dev(
    app: Annotated[str, typer.Argument(help="MODULE:APP, e.g. shop.tasks:app")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    reload: Annotated[
        bool, typer.Option(help="Restart when a .py file under the current folder changes.")
    ] = True,
    require_key: Annotated[
        bool, typer.Option(help="Sign in to the dashboard with an API key (needed off loopback).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Run a worker, the REST API and the dashboard in one process, for development: the
    dashboard at http://HOST:PORT/ opens without a key on 127.0.0.1 (elsewhere only with
    --require-key); the API asks for keys as `perdure server` does. A change to the code
    restarts it; runs in flight are released and resume on the new code (its version stays
    "dev" unless $PERDURE_VERSION or the App names one, so no run is left to an old version)."""
    if not require_key and host not in LOOPBACK:
        console.print(
            f"[red]error:[/red] perdure dev opens its dashboard without a key only on "
            f"127.0.0.1; to serve on {host}, pass --require-key (and sign in with a key from "
            "perdure api-keys create)"
        )
        raise typer.Exit(2)
    try:
        import uvicorn

        from perdure.server import create_app
    except ImportError:
        console.print("[red]error:[/red] perdure dev needs an extra: pip install 'perdure[server]'")
        raise typer.Exit(1) from None
    os.environ.setdefault("PERDURE_VERSION", "dev")  # (the reloaded child inherits it)
    if reload:
        child = [sys.executable, "-m", "perdure", "dev", app, "--host", host, "--port", str(port)]
        child += ["--no-reload", "--log-level", log_level]
        child += ["--require-key"] if require_key else []
        raise typer.Exit(supervise(child, Path.cwd()))
    the_app = load_app(app)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    console.print(f"perdure dev: app {the_app.name!r}, dashboard at {where}", highlight=False)
    server = create_app(the_app, open_access=not require_key, worker=True)
    uvicorn.run(server, host=host, port=port, log_level=log_level)


def supervise(command: list[str], root: Path) -> int:
    """Run `command`, and run it again whenever a .py file under `root` changes, until
    interrupted; its exit status then."""
    seen = _snapshot(root)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped as by Ctrl-C: the child drains
    proc = subprocess.Popen(command)
    try:
        while True:
            time.sleep(POLL)
            now = _snapshot(root)
            if now == seen:
                if proc.poll() is not None and proc.returncode != 0:
                    console.print(
                        f"[yellow]the app stopped (exit {proc.returncode}); "
                        "waiting for a change to the code[/yellow]"
                    )
                    seen = _wait_for_change(root, seen)
                    proc = subprocess.Popen(command)
                elif proc.poll() is not None:
                    return 0
                continue
            changed = sorted(set(now.items()) ^ set(seen.items()))
            name = os.path.relpath(changed[0][0], root) if changed else "the code"
            console.print(f"[cyan]{name} changed: restarting[/cyan]", highlight=False)
            seen = now
            _stop(proc)
            proc = subprocess.Popen(command)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # the worker drains: every run finished or released
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_change(root: Path, seen: dict[str, int]) -> dict[str, int]:
    while True:
        time.sleep(POLL)
        now = _snapshot(root)
        if now != seen:
            return now


def _snapshot(root: Path) -> dict[str, int]:
    """Every .py file under `root` with its modification time."""
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                try:
                    found[path] = os.stat(path).st_mtime_ns
                except FileNotFoundError:
                    continue
    return found
