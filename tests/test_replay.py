"""Journal replay: recorded results and errors come back, the order is checked, gather works."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import perdure
from perdure.errors import NonDeterminismError, StepFailed, TaskFailed
from perdure.records import EntryKind, EntryStatus, RunStatus

from .conftest import running_worker

NO_RETRY = perdure.Retry(max_attempts=1)


@dataclass
class Point:
    x: int
    y: int


async def test_completed_steps_are_not_run_again_on_resume(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.step
    async def fetch(name: str) -> Point:
        calls.append(name)
        return Point(len(name), len(calls))

    @app.task
    async def flow() -> list[int]:
        a = await fetch("a")
        b = await fetch("bb")
        await perdure.sleep(0.05)  # suspends: the run is re-invoked from the top afterwards
        c = await fetch("ccc")
        assert isinstance(a, Point)  # the replayed value has the annotated type
        return [a.x, b.x, c.x, a.y, b.y, c.y]

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == [1, 2, 3, 1, 2, 3]
    assert calls == ["a", "bb", "ccc"]


async def test_recorded_error_is_replayed_not_rerun(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    calls: list[int] = []

    @app.step(retry=NO_RETRY)
    async def boom() -> int:
        calls.append(1)
        raise ValueError("no luck")

    @app.task
    async def flow() -> str:
        try:
            await boom()
        except StepFailed as exc:
            caught = f"{exc.error_type}:{exc.error_message}"
        await perdure.sleep(0.05)  # forces a replay of the failed step
        return caught

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == "builtins.ValueError:no luck"
    assert calls == [1]


async def test_changed_step_order_raises_non_determinism(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    first_pass = True

    @app.step(name="one")
    async def one() -> int:
        return 1

    @app.step(name="two")
    async def two() -> int:
        return 2

    @app.task(retry=NO_RETRY)
    async def flow() -> int:
        nonlocal first_pass
        if first_pass:
            first_pass = False
            await one()
        else:
            await two()  # the code "changed" under the running run
        await perdure.sleep(0.05)
        return 0

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
    assert info.value.error_type == "perdure.errors.NonDeterminismError"
    assert "'two'" in info.value.error_message
    assert "'one'" in info.value.error_message
    assert NonDeterminismError.__name__ in info.value.traceback


async def test_gather_over_steps_is_deterministic(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    runs: list[int] = []

    @app.step
    async def square(n: int) -> int:
        runs.append(n)
        await asyncio.sleep(0.001 * (10 - n))  # finish in reverse order
        return n * n

    @app.task
    async def flow() -> list[int]:
        squares = await asyncio.gather(*(square(n) for n in range(10)))
        await perdure.sleep(0.05)
        again = await asyncio.gather(*(square(n) for n in range(10, 12)))
        return [*squares, *again]

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == [n * n for n in range(12)]
        journal = await app.store.load_journal(handle.id)
    assert sorted(runs) == list(range(12))  # each step ran once despite the replay
    steps = [e for e in journal if e.kind is EntryKind.STEP]
    # sequence numbers follow call order, not completion order
    values = [e.value.data for e in steps if e.value]
    assert [e.seq for e in steps] == [*range(1, 11), *range(12, 14)]
    assert len(values) == 12


async def test_now_uuid_random_are_recorded(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    seen: list[tuple[dt.datetime, uuid.UUID, float]] = []

    @app.task
    async def flow() -> str:
        values = (perdure.now(), perdure.uuid4(), perdure.random())
        seen.append(values)
        await perdure.sleep(0.05)
        return "ok"

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == "ok"
    assert len(seen) == 2  # ran, slept, replayed
    assert seen[0] == seen[1]
    assert seen[0][0].tzinfo is not None
    assert isinstance(seen[0][1], uuid.UUID)


def test_sync_task_with_sync_steps(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    calls: list[int] = []

    @app.step
    def double(n: int) -> int:
        calls.append(n)
        return n * 2

    @app.task
    def flow(n: int) -> int:
        total = double(n)
        perdure.sleep(0.05)
        return int(total + double(total))

    async def main() -> int:
        async with running_worker(app):
            handle = await flow.trigger(5)
            return await handle.result(timeout=10)

    assert asyncio.run(main()) == 30
    assert calls == [5, 10]


async def test_failed_entry_is_stored_with_error(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.step(retry=NO_RETRY)
    async def boom() -> None:
        raise KeyError("missing")

    @app.task(retry=NO_RETRY)
    async def flow() -> None:
        await boom()

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed, match="StepFailed"):
            await handle.result(timeout=10)
        run = await app.store.get_run(handle.id)
        journal = await app.store.load_journal(handle.id)
    assert run.status is RunStatus.FAILED
    assert journal[0].status is EntryStatus.FAILED
    assert journal[0].error is not None
    assert journal[0].error.type == "builtins.KeyError"
    assert "raise KeyError" in journal[0].error.traceback


async def test_trigger_inside_a_task_is_journaled(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def child(n: int) -> int:
        return n * 10

    @app.task
    async def parent() -> list[int]:
        first = await child.trigger(1)
        await perdure.sleep(0.05)  # the replay must not trigger the child again
        second = await child.trigger(2)
        return [await first.result(timeout=10), await second.result(timeout=10)]

    async with running_worker(app, concurrency=4):
        handle = await parent.trigger()
        assert await handle.result(timeout=10) == [10, 20]
        runs = await app.store.list_runs()
    assert sorted(r.task for r in runs) == sorted([parent.name, child.name, child.name])
    keys = {r.idempotency_key for r in runs if r.task == child.name}
    assert keys == {f"perdure:{handle.id}:1", f"perdure:{handle.id}:3"}


async def test_logs_carry_stable_keys_and_stay_quiet_on_replay(
    make_app: Callable[..., perdure.App],
) -> None:
    from perdure.testing import capture_logs

    app = make_app()

    @app.step(retry=perdure.Retry(max_attempts=2, min_timeout=0.01))
    async def flaky() -> int:
        flaky_calls.append(1)
        if len(flaky_calls) == 1:
            raise ConnectionError("once")
        return 1

    flaky_calls: list[int] = []

    @app.task
    async def flow() -> int:
        value: int = await flaky()
        await perdure.sleep(0.05)  # replays flaky: no second retry log, no second start log
        return value

    with capture_logs() as logs:
        async with running_worker(app):
            handle = await flow.trigger()
            assert await handle.result(timeout=10) == 1
    mine = [r for r in logs.for_run(handle.id)]
    actions = [str(getattr(r, "action", "")) for r in mine]
    assert actions == ["run_start", "step_retry", "run_waiting", "run_completed"]
    retry = mine[1]
    assert (getattr(retry, "step", None), getattr(retry, "attempt", None)) == (flaky.name, 1)
