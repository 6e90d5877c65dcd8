"""Faults inside runs: code that tries to end the worker, timeouts that are swallowed, workers
that lose their claim; each fails or recovers the run cleanly, and the worker goes on."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

import perdure
from perdure.crypto import new_key
from perdure.errors import TaskFailed
from perdure.store.base import EntryStatus, RunStatus

from .conftest import running_worker, wait_until


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
