"""perdure.testing.harness: an app on a store of its own with a worker in the test's process;
time travel makes a day's durable sleep, a token's timeout, a retry's long backoff and a
schedule's next tick come due at once (each test finishes in well under a second of waiting)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.errors import ConfigurationError, WaitTimeout
from perdure.testing import harness

DAY = 24 * 3600.0


def _app() -> perdure.App:
    app = perdure.App("kit")

    @app.task(name="remind")
    async def remind(who: str) -> str:
        await perdure.sleep(DAY)
        return f"reminded {who}"

    @app.task(name="approve")
    async def approve(order: int) -> str:
        try:
            decision = await perdure.wait_for_token("approval", timeout=3 * DAY)
        except WaitTimeout:
            return f"order {order}: no decision"
        return f"order {order}: {decision}"

    calls: list[float] = []

    @app.step(
        name="flaky",
        retry=perdure.Retry(max_attempts=2, min_timeout=3600, max_timeout=7200, jitter=False),
    )
    async def flaky() -> int:
        calls.append(time.time())
        if len(calls) == 1:
            raise RuntimeError("down for an hour")
        return len(calls)

    @app.task(name="patient")
    async def patient() -> int:
        return await flaky()

    @app.task(name="tick", schedule=perdure.Cron("0 9 * * *", tz="UTC"))
    async def tick(scheduled_at: dt.datetime) -> str:
        return scheduled_at.isoformat()

    return app


async def test_a_days_sleep_and_a_tokens_timeout_pass_at_once(tmp_path: Path) -> None:
    app = _app()
    started = time.monotonic()
    async with harness(app, tmp_path) as h:
        before = h.now()
        slept = await app.get_task("remind").trigger("ana")
        await _waiting(slept)
        await h.advance(DAY)
        assert await slept.result(timeout=10) == "reminded ana"
        assert h.now() - before >= DAY

        decided = await app.get_task("approve").trigger(1)
        timed_out = await app.get_task("approve").trigger(2)
        await _waiting(decided)
        await _waiting(timed_out)
        await decided.complete_token("approval", "yes")
        assert await decided.result(timeout=10) == "order 1: yes"
        await h.advance(3 * DAY)
        assert await timed_out.result(timeout=10) == "order 2: no decision"
    assert time.monotonic() - started < 30  # (days, in seconds)


async def test_a_long_retry_backoff_and_a_schedule_come_due_at_once(tmp_path: Path) -> None:
    app = _app()
    async with harness(app, tmp_path) as h:
        run = await app.get_task("patient").trigger()
        await _waiting(run)  # the step's retry backoff of an hour suspended it
        await h.advance(3600)
        assert await run.result(timeout=10) == 2

        await h.advance(DAY)  # a 09:00 UTC tick falls within
        ticks = await _runs_of(app, "tick")
        assert len(ticks) == 1
        assert await (await app.handle(ticks[0].id)).result(timeout=10)


async def test_the_harness_refuses_an_open_store_and_postgres_cannot_travel(
    tmp_path: Path, postgres_url: str
) -> None:
    app = _app()
    await app.store.open()
    with pytest.raises(ConfigurationError, match="opened its store"):
        async with harness(app, tmp_path):
            pass
    await app.close()
    on_postgres = perdure.App("kit", database=postgres_url)
    with pytest.raises(ConfigurationError, match="SQLite"):
        await on_postgres.store.advance_clock(60)
    await on_postgres.close()


async def _waiting(handle: perdure.RunHandle[Any]) -> None:
    for _ in range(500):
        if await handle.status() is perdure.RunStatus.WAITING:
            return
        await _pause()
    raise AssertionError(f"run {handle.id} never waited")


async def _runs_of(app: perdure.App, task: str) -> list[perdure.records.RunRecord]:
    for _ in range(500):
        found = await app.store.list_runs(task=task)
        if found:
            return found
        await _pause()
    return []


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.01)


async def test_runs_that_take_another_path_on_replay_fail_the_test(tmp_path: Path) -> None:
    app = perdure.App("kit")
    executions = [0]

    @app.step(name="left")
    async def left() -> str:
        return "left"

    @app.step(name="right")
    async def right() -> str:
        return "right"

    @app.task(name="wobbly")
    async def wobbly() -> str:
        executions[0] += 1  # unrecorded state: a replay sees another value
        return await (left() if executions[0] == 1 else right())

    @app.task(name="steady")
    async def steady() -> str:
        return await left()

    results: list[str] = []

    async def run_wobbly() -> None:
        async with harness(app, tmp_path / "a"):
            results.append(await (await app.get_task("wobbly").trigger()).result(timeout=10))

    with pytest.raises(perdure.errors.NonDeterminismError, match="calls step 'right'") as caught:
        await run_wobbly()
    assert results == ["left"]  # the run itself completed; its replay took another path
    assert (caught.value.called, caught.value.recorded) == ("step right", "step left")
    async with harness(app, tmp_path / "b"):  # a run that replays the same: passes
        assert await (await steady.trigger()).result(timeout=10) == "left"


async def test_replay_each_step_resumes_every_run_from_the_top_after_each_step(
    tmp_path: Path,
) -> None:
    """With replay_each_step, a run resumes from the top after each of its steps: a task of
    three steps is entered again after each one, each step body runs once, and the result is
    the same."""
    app = perdure.App("forced")
    entered: list[int] = []
    bodies: list[int] = []

    @app.step(name="double")
    async def double(n: int) -> int:
        bodies.append(n)
        return 2 * n

    @app.task(name="chain")
    async def chain(n: int) -> int:
        entered.append(n)
        for _ in range(3):
            n = await double(n)
        return n

    async with harness(app, tmp_path, replay_each_step=True):
        assert await (await chain.trigger(1)).result(timeout=30) == 8
    assert bodies == [1, 2, 4]
    assert entered == [1] * 5  # the first execution, one after each step, the final check


async def test_replay_each_step_catches_a_branch_on_something_unrecorded(
    tmp_path: Path,
) -> None:
    """A task that branches on a process-wide counter (not recorded) takes another path when
    it resumes after its first step: with replay_each_step the run fails there with
    NonDeterminismError, without waiting for a crash to reveal it."""
    app = perdure.App("forced")
    executions = [0]

    @app.step(name="email")
    async def email() -> str:
        return "emailed"

    @app.step(name="sms")
    async def sms() -> str:
        return "texted"

    @app.task(name="notify", retry=perdure.Retry(max_attempts=1))
    async def notify() -> list[str]:
        executions[0] += 1
        first = await (email() if executions[0] == 1 else sms())  # wrong: not recorded
        return [first, await email()]

    async with harness(app, tmp_path, replay_each_step=True, check_replay=False):
        handle = await notify.trigger()
        with pytest.raises(perdure.errors.TaskFailed, match="NonDeterminismError") as failed:
            await handle.result(timeout=30)
    assert "'sms'" in str(failed.value)
    assert "'email'" in str(failed.value)
