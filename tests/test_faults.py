"""Faults inside runs: code that tries to end the worker, timeouts that are swallowed, workers
that lose their claim; each fails or recovers the run cleanly, and the worker goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import perdure
from perdure.crypto import new_key
from perdure.errors import PerdureError, StoreUnavailable, TaskFailed
from perdure.records import EntryStatus, RunStatus

from . import crashapp
from .conftest import WorkerProcess, running_worker, wait_until


@pytest.mark.parametrize("kind", ["async", "sync", "async+timeout", "task"])
async def test_system_exit_in_a_step_fails_the_step_and_the_worker_goes_on(
    make_app: Callable[..., perdure.App], kind: str
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.step(name="quits", retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def quits() -> None:
        calls.append("async")
        sys.exit(3)

    @app.step(name="interrupts", retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    def interrupts() -> None:
        calls.append("sync")
        raise KeyboardInterrupt

    @app.step(
        name="quits_in_time", retry=perdure.Retry(max_attempts=3, min_timeout=0.01), timeout=5
    )
    async def quits_in_time() -> None:
        calls.append("async+timeout")
        raise SystemExit("library gave up")

    @app.task(retry=perdure.Retry(max_attempts=2, min_timeout=0.01))
    async def flow(kind: str) -> None:
        if kind == "async":
            await quits()
        elif kind == "sync":
            await interrupts()  # type: ignore[misc]
        elif kind == "async+timeout":
            await quits_in_time()
        else:
            calls.append("task")
            sys.exit(0)

    @app.task
    async def fine() -> str:
        return "ok"

    async with running_worker(app):
        handle = await flow.trigger(kind)
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
        # the worker is still serving
        assert await (await fine.trigger()).result(timeout=10) == "ok"
        journal = await app.store.load_journal(handle.id)
        run = await app.store.get_run(handle.id)
    assert calls == [kind]  # not retried, by the step or the task
    assert run.attempt == 1
    message = info.value.error_message
    assert ("KeyboardInterrupt" if kind == "sync" else "SystemExit") in message
    assert "StepExited" in info.value.error_type or "StepFailed" in info.value.error_type
    if kind != "task":
        assert [e.status for e in journal] == [EntryStatus.FAILED]
        error = journal[0].error
        assert error is not None
        assert not error.retryable
        assert ("KeyboardInterrupt" if kind == "sync" else "SystemExit") in error.traceback


async def test_a_run_this_worker_cannot_read_is_given_back_not_stranded(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started without the encryption key claims an encrypted run: it cannot decode
    the arguments, so it gives the run back with a note saying why (and goes on serving);
    a worker with the key then runs it."""

    def define(app: perdure.App) -> perdure.Task[[str], str]:
        @app.task(name="echo")
        async def echo(text: str) -> str:
            return text

        @app.task(name="plain")
        async def plain() -> str:
            return "plain"

        return echo

    key = new_key()
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", key)
    keyed = make_app()
    echo = define(keyed)
    handle = await echo.trigger("secret words")
    await keyed.close()

    monkeypatch.delenv("PERDURE_ENCRYPTION_KEY")
    keyless = make_app()
    define(keyless)
    async with running_worker(keyless):
        await wait_until(lambda: _noted(keyless, handle.id))
        (run,) = await keyless.store.list_runs(task="echo")  # (get_run would decode its args)
        assert run.status is RunStatus.QUEUED
        assert run.worker_id is None
        assert run.note is not None
        assert "EncryptionError" in run.note
        assert "PERDURE_ENCRYPTION_KEY" in run.note
        # the worker is still serving
        assert await (await keyless.get_task("plain").trigger()).result(timeout=10) == "plain"

    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", key)
    keyed = make_app()
    define(keyed)
    async with running_worker(keyed):
        assert await handle.result(timeout=15) == "secret words"


async def _noted(app: perdure.App, run_id: str) -> bool:
    return any(run.note for run in await app.store.list_runs() if run.id == run_id)


async def test_a_step_over_its_timeout_fails_even_if_it_swallows_the_cancellation(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    returned: list[float] = []

    @app.step(retry=perdure.Retry(max_attempts=1), timeout=0.2)
    async def stubborn() -> str:
        for _ in range(10):
            with contextlib.suppress(asyncio.CancelledError):  # a library that swallows it
                await asyncio.sleep(0.1)
        returned.append(time.time())
        return "late"

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def flow() -> str:
        result: str = await stubborn()
        return result

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed, match="StepTimeout"):
            await handle.result(timeout=10)
        journal = await app.store.load_journal(handle.id)
        attempts = await app.store.load_attempts(handle.id)
        await wait_until(lambda: returned, timeout=5)  # the body did return "late", later
    (entry,) = journal
    assert entry.status is EntryStatus.FAILED  # the late value was dropped
    assert entry.error is not None
    assert entry.error.type == "perdure.errors.StepTimeout"
    (step_attempt,) = [a for a in attempts if a.seq == 1]
    assert step_attempt.finished_at < returned[0]  # it failed at its timeout, not at the return


async def test_step_key_is_stable_per_step_call(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    keys: list[str] = []

    @app.step(retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def charge(amount: int) -> str:
        keys.append(perdure.step_key())
        if len(keys) == 1:
            raise ConnectionError("the payment API timed out")
        return f"charged {amount} with key {perdure.step_key()}"

    @app.task
    async def checkout() -> list[str]:
        return [await charge(1), await charge(2)]

    async with running_worker(app):
        handle = await checkout.trigger()
        first, second = await handle.result(timeout=10)
    assert keys == [f"{handle.id}:1", f"{handle.id}:1", f"{handle.id}:2"]  # retries share one
    assert first.endswith(f"{handle.id}:1")
    assert second.endswith(f"{handle.id}:2")
    with pytest.raises(PerdureError, match="inside a step"):
        perdure.step_key()


async def test_a_worker_whose_step_threads_are_all_stuck_stops_claiming_and_drains(
    tmp_path: Path, worker_processes: list[WorkerProcess], database_url: str
) -> None:
    """Sync steps that outlast their timeouts keep their threads (sync code cannot be
    interrupted). Once every step thread is held, the worker says so and claims nothing; its
    store still works, and SIGTERM drains and exits within the drain timeout."""
    app = perdure.App("crash", database=database_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="stuck_task")(crashapp.stuck_task.fn)
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
        "PERDURE_DRAIN_TIMEOUT": "1",
    }
    worker = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "w.log", concurrency=1)
    worker_processes.append(worker)
    threads = 1 * 2 + 4  # the worker's step threads for concurrency 1
    handles = [await app.get_task("stuck_task").trigger(60.0) for _ in range(threads + 2)]
    await wait_until(lambda: "claims nothing" in worker.log.read_text(), timeout=30)
    statuses = [await h.status() for h in handles]
    assert statuses.count(RunStatus.COMPLETED) == threads
    assert statuses.count(RunStatus.QUEUED) == 2  # left for a worker that can run them
    assert [await h.result(timeout=1) for h in handles[:threads]] == ["timed out"] * threads
    started = time.monotonic()
    assert await asyncio.to_thread(worker.terminate, 15) == 0
    assert time.monotonic() - started < 10
    await app.close()


@pytest.mark.parametrize("name", ["bad\ud800name", "bad\x00name"])
async def test_a_value_the_store_refuses_fails_the_run_after_its_retries(
    make_app: Callable[..., perdure.App], name: str
) -> None:
    """A write the database refuses for good (a name it cannot hold) fails the attempt with
    StoreRefused; the task's retry policy decides what follows, and the step body does not run
    again every few seconds forever."""
    app = make_app()
    bodies: list[str] = []

    @app.step(name=name)
    async def odd() -> str:
        bodies.append("ran")
        return "value"

    @app.task(retry=perdure.Retry(max_attempts=2, min_timeout=0.01))
    async def flow() -> str:
        result: str = await odd()
        return result

    if "\x00" in name and app.database.startswith("sqlite"):
        pytest.skip("SQLite holds NUL characters in text")
    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=20)
        await asyncio.sleep(0.5)  # a runaway retry loop would run the body again
    assert info.value.error_type == "perdure.errors.StoreRefused"
    assert bodies == ["ran", "ran"]  # once per task attempt


async def test_a_recorded_value_gone_from_the_blob_store_fails_the_run_naming_it(
    make_app: Callable[..., perdure.App], tmp_path: Path
) -> None:
    app = make_app(inline_limit=1024)

    @app.step(name="fetch_page")
    async def fetch_page() -> str:
        return "page " * 1000  # over the inline limit: kept in the blob store

    @app.task(retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def crawl() -> int:
        page = await fetch_page()
        await perdure.sleep(0.5)
        return len(page)

    async with running_worker(app):
        handle = await crawl.trigger()
        await wait_until(lambda: _is(handle, RunStatus.WAITING), timeout=10)
        blobs = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert blobs
        for blob in blobs:
            blob.unlink()
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
    assert info.value.error_type == "perdure.errors.CorruptJournal"
    message = info.value.error_message
    assert "seq 1" in message
    assert "fetch_page" in message
    assert "missing" in message


async def _is(handle: perdure.RunHandle[int], status: RunStatus) -> bool:
    return await handle.status() is status


async def test_max_steps_ends_a_runaway_loop(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.step
    async def poll(n: int) -> int:
        return n

    @app.task(max_steps=5, retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def forever() -> None:
        n = 0
        while True:  # a loop whose end condition never comes
            n = await poll(n + 1)

    async with running_worker(app):
        handle = await forever.trigger()
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
        journal = await app.store.load_journal(handle.id)
        run = await app.store.get_run(handle.id)
    assert info.value.error_type == "perdure.errors.TooManySteps"
    assert "max_steps of 5" in info.value.error_message
    assert [e.seq for e in journal] == [1, 2, 3, 4, 5]
    assert run.attempt == 1  # not retried: it would only hit the bound again


async def test_a_trigger_on_a_full_disk_gives_up_in_time_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SQLite database's disk is full: the store warns "disk full", a trigger gives up
    after PERDURE_TRIGGER_TIMEOUT with StoreUnavailable (nothing stored), and once there is
    room again triggers work."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("needs root to mount a small tmpfs")
        pytest.skip("needs root to mount a small tmpfs")
    from .chaos.harness import fill_disk, small_disk

    monkeypatch.setenv("PERDURE_TRIGGER_TIMEOUT", "2")
    with small_disk(tmp_path / "disk", 16) as disk:
        app = perdure.App("full", database=f"sqlite:///{disk}/p.db", blobs=f"file://{tmp_path}/b")

        @app.task
        async def noop() -> None:
            return None

        await noop.trigger()
        filler = disk / "filler"
        await asyncio.to_thread(fill_disk, filler)
        with (
            caplog.at_level(logging.WARNING, logger="perdure.store"),
            pytest.raises(StoreUnavailable, match="disk full"),
        ):
            await noop.trigger()
        assert any("disk full" in r.getMessage() for r in caplog.records)
        filler.unlink()
        await noop.trigger()
        assert len(await app.store.list_runs()) == 2  # the one that gave up is not there
        await app.close()


async def test_a_step_raising_cancelled_error_itself_fails_the_run_not_strands_it(
    make_app: Callable[..., perdure.App],
) -> None:
    """Code that raises asyncio.CancelledError without anyone cancelling the run (a library
    bug) fails the attempt like any error; the run never stays running with nobody on it."""
    app = make_app()

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def confused() -> None:
        raise asyncio.CancelledError("a library gave up")

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def flow() -> None:
        await confused()

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed, match="CancelledError"):
            await handle.result(timeout=10)
