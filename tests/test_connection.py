"""Connecting to PostgreSQL: a wrong URL fails at once with the reason, from Python and from
the CLI; a server that is down is waited for (a worker starts once it is up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import perdure
from perdure.errors import ConfigurationError

from . import crashapp
from .conftest import ROOT, WorkerProcess, wait_until
from .pg import url_for
from .pg_private import PrivateCluster


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (url_for("no_such_database_here"), 'database "no_such_database_here" does not exist'),
        (
            url_for("postgres").replace("postgres@", "no_such_role@"),
            'role "no_such_role" does not exist',
        ),
        ("postgresql://postgres@no-such-host.invalid:5432/postgres", "no-such-host.invalid"),
        (url_for("postgres") + "?sslmode=bogus", "invalid sslmode"),
        ("postgresql://postgres@127.0.0.1:99999/postgres", "invalid port"),
    ],
)
async def test_a_wrong_database_url_fails_at_once_with_the_reason(
    postgres_template: None, tmp_path: Path, url: str, reason: str
) -> None:
    app = perdure.App("shop", database=url, blobs=f"file://{tmp_path}/blobs")

    @app.task
    async def noop() -> None:
        return None

    with pytest.raises(ConfigurationError, match="cannot connect to PostgreSQL") as info:
        await noop.trigger()
    assert reason in str(info.value)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "perdure", "runs", "list", "--database", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    said = " ".join((done.stdout + done.stderr).split())  # (the console wraps long lines)
    assert done.returncode == 1
    assert reason in said
    assert "Traceback" not in said
    await app.close()


async def test_a_worker_started_while_the_database_is_down_waits_for_it(
    tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    with PrivateCluster() as cluster:
        url = cluster.url()
        cluster.stop()
        env = {
            "PERDURE_DATABASE_URL": url,
            "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
            "CRASH_LOG": str(tmp_path / "side-effects.log"),
        }
        worker = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "worker.log")
        worker_processes.append(worker)
        await wait_until(lambda: "retrying" in worker.log.read_text(), timeout=30)
        assert worker.proc.poll() is None  # waiting, not exited
        cluster.start()
        worker.wait_started()
        app = perdure.App("crash", database=url, blobs=f"file://{tmp_path}/blobs")
        app.task(name="pipeline")(crashapp.pipeline.fn)
        handle = await app.get_task("pipeline").trigger("up", 1)
        assert await handle.result(timeout=30) == ["up:1"]
        await app.close()
        assert worker.terminate() == 0


async def test_after_a_restart_one_failure_replaces_every_broken_pooled_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server restart cuts every connection of a pool. The first operation to find one
    broken has the pool test its idle ones and replace the broken: the operations after it
    are not each failed by a dead connection of their own, a backoff apart (a worker took a
    pool's worth of retries, half a minute, to recover from a restart)."""
    with PrivateCluster() as cluster:
        app = perdure.App("restart", database=cluster.url(), blobs=f"file://{tmp_path}/blobs")
        store = app.store
        await store.open()
        pool = await store.db._pool()  # type: ignore[attr-defined]
        async with contextlib.AsyncExitStack() as held:  # the pool grows to 8 connections
            for _ in range(8):
                await held.enter_async_context(pool.connection())
        assert pool.get_stats()["pool_available"] >= 8
        await asyncio.to_thread(cluster.restart)
        with caplog.at_level(logging.WARNING, logger="perdure.store"):
            for _ in range(8):  # each would take a broken connection of its own
                await store.list_runs(limit=1)
        retries = [r for r in caplog.records if getattr(r, "action", None) == "store_retry"]
        assert 1 <= len(retries) <= 2, [r.getMessage() for r in retries]
        await app.close()
