"""A real `perdure server` on 127.0.0.1 serving tests/waitapp.py, with a real worker process and
API keys of each scope: the `served` fixture of the API, client and dashboard tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import perdure

from . import waitapp
from .conftest import ROOT, WorkerProcess, wait_until

SECRETS = {
    "ORDERS_WEBHOOK_SECRET": "whsec-orders-test",
    "STRIPE_WEBHOOK_SECRET": "whsec-stripe-test",
    "GITHUB_WEBHOOK_SECRET": "whsec-github-test",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def healthy(url: str) -> bool:
    """True once the server at `url` answers /healthz."""
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


class ServerProcess:
    """`perdure server MODULE:APP` in a subprocess."""

    def __init__(self, spec: str, env: dict[str, str], *, port: int, log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perdure", "server", spec, "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
            stdout=self._log,
            stderr=self._log,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


class Served:
    """A server process, the app it serves (as seen from the test) and keys of each scope."""

    def __init__(self, url: str, app: perdure.App, keys: dict[str, str]) -> None:
        self.url = url
        self.app = app
        self.keys = keys

    def client(self, scope: str | None = "admin") -> httpx.AsyncClient:
        headers = {} if scope is None else {"Authorization": f"Bearer {self.keys[scope]}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
async def served(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> AsyncIterator[Served]:
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
        **SECRETS,
    }
    app = perdure.App("waits", database=database_url, blobs=env["PERDURE_BLOB_URL"])
    for name in ("approval", "chat", "add", "tick", "narrate", "got", "fragile"):
        app.task(name=name)(getattr(waitapp, name).fn)
    keys = {}
    for scope in ("read", "trigger", "admin"):
        _record, keys[scope] = await app.admin.create_api_key(name=scope, scope=scope)
    worker_processes.append(WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w.log"))
    port = free_port()
    server = ServerProcess("tests.waitapp:app", env, port=port, log=tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as probe:

            async def up() -> bool:
                try:
                    return (await probe.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(up, timeout=30)
        yield Served(url, app, keys)
    finally:
        server.stop()
        await app.close()
