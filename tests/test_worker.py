"""Worker life cycle: graceful drain on SIGTERM, release when the drain runs out."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

import perdure
from perdure.config import WorkerConfig
from perdure.errors import ConfigurationError
from perdure.records import RunStatus

from . import crashapp
from .conftest import WorkerProcess, wait_until


def _env(tmp_path: Path, database: str, **extra: str) -> dict[str, str]:
    return {
        "PERDURE_DATABASE_URL": database,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
        "CRASH_GATE": str(tmp_path / "gate"),
        "CRASH_GATE_STEP": "2",
        **extra,
    }


def _app(tmp_path: Path, database: str) -> perdure.App:
    app = perdure.App("crash", database=database, blobs=f"file://{tmp_path}/blobs")
    app.task(name="pipeline")(crashapp.pipeline.fn)
    return app


def _started(tmp_path: Path, key: str, index: int) -> int:
    return crashapp.starts(tmp_path / "side-effects.log", key, index)


async def test_sigterm_lets_running_runs_finish(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    app = _app(tmp_path, database_url)
    (tmp_path / "gate").touch()
    worker = WorkerProcess(
        "tests.crashapp:app", _env(tmp_path, database_url), log=tmp_path / "w.log"
    )
    worker_processes.append(worker)
    handle = await app.get_task("pipeline").trigger("g", 3)
    await wait_until(lambda: _started(tmp_path, "g", 2) == 1, timeout=30)
    worker.proc.send_signal(15)
    await asyncio.sleep(0.3)  # the worker is draining: it must not have exited
    assert worker.proc.poll() is None
    (tmp_path / "gate").unlink()
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert await handle.status() is RunStatus.COMPLETED
    assert "draining 1 run(s)" in worker.log.read_text()
    await app.close()


async def test_sigterm_releases_runs_that_outlast_the_drain(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    app = _app(tmp_path, database_url)
    (tmp_path / "gate").touch()
    env = _env(tmp_path, database_url, PERDURE_DRAIN_TIMEOUT="0.3")
    worker = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "w1.log")
    worker_processes.append(worker)
    handle = await app.get_task("pipeline").trigger("r", 3)
    await wait_until(lambda: _started(tmp_path, "r", 2) == 1, timeout=30)
    assert worker.terminate(timeout=30) == 0
    run = await app.store.get_run(handle.id)
    assert run.status is RunStatus.QUEUED  # released, not lost and not failed
    assert run.worker_id is None
    (tmp_path / "gate").unlink()
    worker_processes.append(WorkerProcess("tests.crashapp:app", env, log=tmp_path / "w2.log"))
    assert await handle.result(timeout=30) == ["r:1", "r:2", "r:3"]
    assert _started(tmp_path, "r", 1) == 1
    await app.close()


async def test_a_worker_declared_dead_stops_claiming_and_exits_non_zero(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    """Another worker declared this one dead (say, it was cut off from the database longer than
    the stall time): its runs were requeued; it must claim nothing more, stop its runs, and
    exit non-zero so that a supervisor restarts it."""
    app = _app(tmp_path, database_url)
    (tmp_path / "gate").touch()
    worker = WorkerProcess(
        "tests.crashapp:app", _env(tmp_path, database_url), log=tmp_path / "w.log"
    )
    worker_processes.append(worker)
    handle = await app.get_task("pipeline").trigger("d", 3)
    await wait_until(lambda: _started(tmp_path, "d", 2) == 1, timeout=30)
    (me,) = await app.store.live_workers(app="crash")
    assert await app.store.reap_workers([me.id], reason="stalled (test)") == 1
    code = await asyncio.to_thread(worker.proc.wait, 15)
    assert code != 0
    assert "declared dead" in worker.log.read_text()
    run = await app.store.get_run(handle.id)
    assert run.status is RunStatus.QUEUED
    assert run.worker_id is None
    await app.close()


async def test_a_worker_stopped_before_a_step_does_not_start_it_once_taken_over(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    """A worker process is stopped (SIGSTOP) in a run's task body before a step, with nothing
    left to record (whose refused write would tell it), for longer than the stall time; another
    worker takes the run over and completes it. Resumed, the first worker goes on to the step:
    it must find out that it lost the run before the step's body starts, not after."""
    app = _app(tmp_path, database_url)
    gate = tmp_path / "task-gate"
    gate.touch()
    fast = {"PERDURE_HEARTBEAT_INTERVAL": "0.2", "PERDURE_PID_CHECK": "0"}
    first = WorkerProcess(
        "tests.crashapp:app",
        _env(tmp_path, database_url, CRASH_TASK_GATE=str(gate), CRASH_TASK_GATE_STEP="1", **fast),
        log=tmp_path / "first.log",
    )
    worker_processes.append(first)
    handle = await app.get_task("pipeline").trigger("between", 3)
    await wait_until(lambda: Path(f"{gate}.reached").exists(), timeout=30)
    first.freeze(database_url)  # in the task body, before step 1
    second = WorkerProcess(
        "tests.crashapp:app", _env(tmp_path, database_url, **fast), log=tmp_path / "second.log"
    )
    worker_processes.append(second)
    assert await handle.result(timeout=30) == ["between:1", "between:2", "between:3"]
    gate.unlink()
    os.kill(first.pid, signal.SIGCONT)
    assert await asyncio.to_thread(first.proc.wait, 15) != 0  # it stopped: declared dead
    for index in (1, 2, 3):
        assert _started(tmp_path, "between", index) == 1  # by the second worker only
    await app.close()


def test_worker_settings_that_cannot_work_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_DRAIN_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError, match="PERDURE_DRAIN_TIMEOUT"):
        WorkerConfig()
    monkeypatch.setenv("PERDURE_DRAIN_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="not a number"):
        WorkerConfig()


async def test_a_cancel_from_another_process_stops_the_run_at_its_next_await(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    app = _app(tmp_path, database_url)
    (tmp_path / "gate").touch()
    worker = WorkerProcess(
        "tests.crashapp:app", _env(tmp_path, database_url), log=tmp_path / "w.log"
    )
    worker_processes.append(worker)
    handle = await app.get_task("pipeline").trigger("stop", 3)
    await wait_until(lambda: _started(tmp_path, "stop", 2) == 1, timeout=30)
    assert await handle.cancel() is RunStatus.RUNNING  # asked; its worker stops it
    with pytest.raises(perdure.errors.RunCancelled):
        await handle.result(timeout=1.0)  # within a second, while step 2 still waits
    (tmp_path / "gate").unlink()
    await asyncio.sleep(0.5)
    assert _started(tmp_path, "stop", 3) == 0  # no step body after the cancel
    run = await app.store.get_run(handle.id)
    assert run.status is RunStatus.CANCELLED
    assert worker.terminate() == 0
    await app.close()
