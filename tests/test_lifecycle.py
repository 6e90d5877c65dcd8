"""Middleware around runs and steps, and lifecycle hooks, on both stores: middleware nests in the
order added and its context reaches the step's body (in its thread too), a replayed step enters
no middleware; each hook fires once per event of a run, the App's before the task's, failure
only after the last retry, and a hook that raises fails nothing."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import perdure
from perdure.records import Lease, RunStatus

from . import hookapp
from .conftest import WorkerProcess, running_worker, table_rows, wait_until

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


async def test_middleware_wraps_runs_and_executed_steps_in_order(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    seen: list[str] = []

    def recorder(
        name: str,
    ) -> Callable[[perdure.Call], contextlib.AbstractAsyncContextManager[None]]:
        @contextlib.asynccontextmanager
        async def wrap(call: perdure.Call) -> AsyncIterator[None]:
            what = call.step if call.kind == "step" else "run"
            seen.append(f"{name}>{what}")
            token = TENANT.set(f"tenant-of-{call.run_id[-4:]}")
            try:
                yield
            finally:
                TENANT.reset(token)
                seen.append(f"{name}<{what}")

        return wrap

    app.middleware(recorder("outer"))
    app.middleware(recorder("inner"))

    @app.step(name="async_step")
    async def async_step() -> str:
        return TENANT.get()

    @app.step(name="sync_step")
    def sync_step() -> str:  # in a thread
        return TENANT.get()

    @app.task(name="job")
    async def job() -> list[str]:
        first = await async_step()
        await perdure.sleep(0.05)  # a second execution: async_step replays
        return [first, await sync_step()]  # type: ignore[misc]

    async with running_worker(app):
        handle = await job.trigger()
        tenants = await handle.result(timeout=30)
    assert tenants == [f"tenant-of-{handle.id[-4:]}"] * 2
    assert seen == [
        "outer>run", "inner>run",
        "outer>async_step", "inner>async_step", "inner<async_step", "outer<async_step",
        "inner<run", "outer<run",
        # the resumed execution: the replayed step enters no middleware
        "outer>run", "inner>run",
        "outer>sync_step", "inner>sync_step", "inner<sync_step", "outer<sync_step",
        "inner<run", "outer<run",
    ]  # fmt: skip
    await app.close()


async def test_each_hook_fires_once_per_event_the_apps_first(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    fired: list[tuple[str, str, object]] = []

    @app.on_start
    async def app_start(event: perdure.Lifecycle) -> None:
        fired.append(("app", event.event, None))

    @app.on_success
    def app_success(event: perdure.Lifecycle) -> None:  # sync: in a thread
        fired.append(("app", event.event, event.result))

    @app.step(name="step")
    async def step() -> int:
        return 1

    @app.task(name="job")
    async def job() -> int:
        await step()
        await perdure.sleep(0.05)
        return 42

    @job.on_start
    async def broken(event: perdure.Lifecycle) -> None:
        raise RuntimeError("a hook that fails")  # logged; the run goes on

    @job.on_wait
    async def waits(event: perdure.Lifecycle) -> None:
        fired.append(("task", event.event, event.waiting_for))

    @job.on_resume
    async def resumes(event: perdure.Lifecycle) -> None:
        fired.append(("task", event.event, event.attempt))

    @job.on_success
    async def done(event: perdure.Lifecycle) -> None:
        fired.append(("task", event.event, event.result))

    async with running_worker(app):
        handle = await job.trigger()
        assert await handle.result(timeout=30) == 42
    assert fired == [
        ("app", "start", None),
        ("task", "wait", "sleep"),
        ("task", "resume", 1),
        ("app", "success", 42),
        ("task", "success", 42),
    ]
    marks = sorted((row[1], row[2]) for row in table_rows(app, "run_hooks"))
    assert marks == [("resume", 2), ("start", 0), ("success", 0), ("wait", 2)]
    report = await app.admin.purge(older_than=0)
    assert report.runs == 1
    assert table_rows(app, "run_hooks") == []  # purged with the run
    await app.close()


async def test_on_failure_fires_after_the_last_retry_only_and_on_cancel_when_cancelled(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    fired: list[tuple[str, int, str]] = []

    @app.on_failure
    async def alert(event: perdure.Lifecycle) -> None:
        assert event.error is not None
        fired.append((event.event, event.attempt, event.error.message))

    @app.on_cancel
    async def cancelled(event: perdure.Lifecycle) -> None:
        fired.append((event.event, event.attempt, ""))

    @app.task(name="fails", retry=perdure.Retry(max_attempts=2, min_timeout=0.01, jitter=False))
    async def fails() -> None:
        raise ValueError("broken")

    past_the_sleep = asyncio.Event()

    @app.task(name="hangs")
    async def hangs() -> None:
        await perdure.sleep(0.01)
        past_the_sleep.set()
        await asyncio.Event().wait()

    async with running_worker(app):
        failed = await fails.trigger()
        with pytest.raises(perdure.errors.TaskFailed):
            await failed.result(timeout=30)
        await wait_until(lambda: len(fired) == 1)
        assert fired == [("failure", 2, "broken")]  # not at attempt 1: it was retried

        hung = await hangs.trigger()
        # running after its sleep (during the sleep it waits, and a waiting run is cancelled
        # by the store alone: no worker runs its hooks)
        await asyncio.wait_for(past_the_sleep.wait(), 30)
        await hung.cancel()
        await wait_until(lambda: _is(hung, RunStatus.CANCELLED), timeout=30)
        await wait_until(lambda: len(fired) == 2)
        assert fired[1] == ("cancel", 1, "")
    await app.close()


async def _is(handle: perdure.RunHandle[None], status: RunStatus) -> bool:
    return await handle.status() is status


async def test_a_hook_mark_is_written_once_and_only_by_the_holder(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(name="held")
    async def held() -> None: ...

    handle = await held.trigger()
    store = app.store
    await store.register_worker(_worker("w1"))
    (run,) = await store.claim_runs(app=app.name, worker_id="w1", tasks=["held"], limit=1)
    assert await store.mark_hook(run.id, run.held, "start") is True
    assert await store.mark_hook(run.id, run.held, "start") is False  # at most once
    assert await store.mark_hook(run.id, run.held, "wait", 3) is True  # another event
    stale = Lease(run.lease - 1, "w1")
    assert await store.mark_hook(run.id, stale, "resume", 9) is False  # not the holder
    assert await store.mark_hook(run.id, Lease(run.lease, "w2"), "resume", 9) is False
    assert handle.id == run.id
    await app.close()


def _worker(worker_id: str) -> perdure.records.WorkerRecord:
    from perdure.lease import new_worker_record

    return new_worker_record(worker_id, "test", ["held"], 0.0)


@pytest.mark.crash
async def test_hooks_fire_once_across_a_killed_worker(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    """A worker is SIGKILLed inside the run's second step, after on_start fired: the worker
    that takes the run over fires on_resume and on_success, and never on_start again."""
    log, gate = tmp_path / "hooks.log", tmp_path / "gate"
    gate.touch()
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "HOOKS_LOG": str(log),
        "HOOKS_GATE": str(gate),
    }
    first = WorkerProcess("tests.hookapp:app", env, log=tmp_path / "w1.log")
    worker_processes.append(first)
    app = perdure.App("hooked", database=database_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="gated")(hookapp.gated.fn)
    handle = await app.get_task("gated").trigger()
    await wait_until(lambda: log.exists() and "step 2" in log.read_text(), timeout=60)
    first.kill()
    gate.unlink()
    second = WorkerProcess("tests.hookapp:app", env, log=tmp_path / "w2.log")
    worker_processes.append(second)
    assert await handle.result(timeout=90) == 3
    # on_success fires once the run's end is written: the result can be read a moment before
    await wait_until(lambda: "success" in log.read_text(), timeout=30)
    lines = [line.split() for line in log.read_text().splitlines()]
    hooks = [(line[0], line[-1]) for line in lines if line[0] in ("start", "resume", "success")]
    assert hooks == [
        ("start", str(first.pid)),
        ("resume", str(second.pid)),
        ("success", str(second.pid)),
    ]
    steps = [(line[1], line[-1]) for line in lines if line[0] == "step"]
    assert steps == [("1", str(first.pid)), ("2", str(first.pid)), ("2", str(second.pid))]
    await app.close()
