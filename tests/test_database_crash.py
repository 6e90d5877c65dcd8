"""A PostgreSQL crash (immediate shutdown, as a power cut leaves it) on a private server: a
claim that was not yet on disk is lost, the run is claimed again with the same claim counter,
and still only one worker records into it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

import perdure
from perdure.records import RunStatus

from . import crashapp
from .conftest import WorkerProcess, wait_until
from .pg_private import PrivateCluster

pytestmark = pytest.mark.crash


def _starts(log: Path, key: str, index: int) -> int:
    return crashapp.starts(log, key, index)


async def test_a_claim_lost_in_a_database_crash_is_never_shared(
    tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    # claims are committed without waiting for the disk; the WAL writer waits 10 s, so a
    # claim stays in memory only until the crash
    with PrivateCluster({"wal_writer_delay": "10000ms"}) as cluster:
        url = cluster.url()
        log = tmp_path / "side-effects.log"
        app = perdure.App("crash", database=url, blobs=f"file://{tmp_path}/blobs")
        app.task(name="pipeline")(crashapp.pipeline.fn)
        await app.store.open()
        env = {
            "PERDURE_DATABASE_URL": url,
            "PERDURE_BLOB_URL": app.blobs,
            "CRASH_LOG": str(log),
            "CRASH_GATE": str(tmp_path / "gate"),
            "CRASH_GATE_STEP": "1",
        }
        (tmp_path / "gate").touch()
        first = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "first.log")
        worker_processes.append(first)
        first.wait_started()
        await asyncio.sleep(0.5)  # past the worker's first housekeeping write
        handle = await app.get_task("pipeline").trigger("lost", 3)
        await wait_until(lambda: _starts(log, "lost", 1) == 1, timeout=30)
        os.kill(first.pid, signal.SIGSTOP)  # it is inside step 1 under its claim
        await app.close()
        await asyncio.to_thread(cluster.crash)
        await asyncio.to_thread(cluster.start)
        run = await app.store.get_run(handle.id)
        # the claim did not survive the crash: the run is as it was before it
        assert (run.status, run.lease, run.worker_id) == (RunStatus.QUEUED, 0, None)
        second = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "second.log")
        worker_processes.append(second)
        await wait_until(lambda: _starts(log, "lost", 1) == 2, timeout=60)
        claimed = await app.store.get_run(handle.id)
        assert claimed.lease == 1  # the same claim counter the lost claim had
        os.kill(first.pid, signal.SIGCONT)
        (tmp_path / "gate").unlink()
        assert await handle.result(timeout=60) == ["lost:1", "lost:2", "lost:3"]
        # the first worker finished the step body it was in, but could not record it
        await wait_until(lambda: "taken over" in first.log.read_text(), timeout=30)
        journal = await app.store.load_journal(handle.id)
        await app.close()
    assert [e.seq for e in journal] == [1, 2, 3]
    # and went no further: one execution went on from step 1
    assert _starts(log, "lost", 2) == 1
    assert _starts(log, "lost", 3) == 1
