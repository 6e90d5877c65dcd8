"""`perdure dev`: worker, API and dashboard in one process on the embedded store; the dashboard
open without a key on loopback (and refused elsewhere without one); a change to the code
restarts it, and the next run runs the new code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

import perdure

from .conftest import ROOT, wait_until
from .served import free_port

APP = """
import perdure

app = perdure.App("devapp")


@app.task(name="version")
async def version() -> str:
    return "{version}"
"""


async def test_dev_serves_runs_and_restarts_on_a_change(tmp_path: Path) -> None:
    (tmp_path / "devapp.py").write_text(APP.format(version="v1"))
    database = f"sqlite:///{tmp_path}/dev.db"
    env = {**os.environ, "PERDURE_DATABASE_URL": database, "PYTHONPATH": str(ROOT)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_dev(tmp_path, env, port)
    app = perdure.App("devapp", database=database)
    try:
        _record, key = await app.admin.create_api_key(name="dev", scope="trigger")
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def version() -> str | None:
                try:
                    made = await api.post("/api/v1/tasks/version/trigger", json={})
                    run_id = made.json()["id"]
                    done = await api.get(f"/api/v1/runs/{run_id}/result", params={"wait": 20})
                    return str(done.json().get("result"))
                except (httpx.TransportError, KeyError, ValueError):
                    return None  # (restarting)

            await wait_until(lambda: _up(url), timeout=60)
            assert await version() == "v1"  # the worker runs in the same process
            async with httpx.AsyncClient(base_url=url) as browser:
                page = await browser.get("/")
                assert page.status_code == 200  # open on loopback: no sign-in
                assert "Overview" in page.text
                assert (await browser.get("/api/v1/runs")).status_code == 401  # keys still

            (tmp_path / "devapp.py").write_text(APP.format(version="v2"))
            await wait_until(lambda: _is(version, "v2"), timeout=60)
    finally:
        proc.terminate()
        proc.wait(60)
        await app.close()
    assert proc.returncode == 0
    assert "devapp.py changed: restarting" in (tmp_path / "dev.log").read_text()


def test_dev_refuses_to_open_elsewhere_without_a_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "perdure", "dev", "devapp:app", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--require-key" in done.stdout


def _start_dev(cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    with open(cwd / "dev.log", "wb") as log:  # (the child keeps its own descriptor)
        return subprocess.Popen(
            [sys.executable, "-m", "perdure", "dev", "devapp:app", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _up(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url) as probe:
            return (await probe.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def _is(version: object, expected: str) -> bool:
    return await version() == expected  # type: ignore[operator,no-any-return]
