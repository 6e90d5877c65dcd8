"""Clock skew: workers whose clocks are hours off (libfaketime) agree on leases, delays and
sleeps, because on PostgreSQL every stored time is on the server's clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import perdure
from perdure.records import RunStatus

from . import crashapp
from .conftest import WorkerProcess, faketime_env, wait_until


def _env(tmp_path: Path, database: str) -> dict[str, str]:
    return {
        "PERDURE_DATABASE_URL": database,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }


async def _alive(app: perdure.App) -> set[str]:
    return {w.id for w in await app.store.live_workers(app="crash")}


async def test_workers_hours_apart_agree_on_leases_delays_and_sleeps(
    tmp_path: Path, worker_processes: list[WorkerProcess], postgres_url: str
) -> None:
    app = perdure.App("crash", database=postgres_url, blobs=f"file://{tmp_path}/blobs")
    for task in (crashapp.pipeline, crashapp.nap):
        app.task(name=task.name)(task.fn)
    env = _env(tmp_path, postgres_url)
    fast = WorkerProcess(
        "tests.crashapp:app", {**env, **faketime_env("+2h")}, log=tmp_path / "ahead.log"
    )
    worker_processes.append(fast)
    fast.wait_started()
    delayed = await app.get_task("pipeline").trigger("delayed", 1, delay=3600)
    sleeper = await app.get_task("nap").trigger(600.0)
    quick = await app.get_task("pipeline").trigger("quick", 1)
    # the worker two hours ahead runs what is due, and only that
    assert await quick.result(timeout=30) == ["quick:1"]
    await wait_until(lambda: _status(sleeper, RunStatus.WAITING), timeout=30)
    slept = await app.store.get_run(sleeper.id)
    assert slept.available_at is not None
    assert abs(slept.available_at - (time.time() + 600)) < 30  # not 2 h off
    # workers on the right clock and two hours behind join; nobody evicts anybody
    normal = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "normal.log")
    behind = WorkerProcess(
        "tests.crashapp:app", {**env, **faketime_env("-2h")}, log=tmp_path / "behind.log"
    )
    worker_processes.extend([normal, behind])
    normal.wait_started()
    behind.wait_started()
    await wait_until(lambda: _count_alive(app, 3), timeout=30)
    await asyncio.sleep(3.0)  # six reap rounds of each worker
    assert len(await _alive(app)) == 3
    assert all(w.proc.poll() is None for w in (fast, normal, behind))
    again = await app.get_task("pipeline").trigger("again", 1)
    assert await again.result(timeout=30) == ["again:1"]
    assert await delayed.status() is RunStatus.QUEUED  # not started an hour early
    assert await sleeper.status() is RunStatus.WAITING  # still asleep
    for worker in (fast, normal, behind):
        assert "stalled" not in worker.log.read_text()
    await app.close()


async def _status(handle: perdure.RunHandle[str], status: RunStatus) -> bool:
    return await handle.status() is status


async def _count_alive(app: perdure.App, count: int) -> bool:
    return len(await _alive(app)) == count
