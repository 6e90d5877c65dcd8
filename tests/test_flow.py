"""Flow control and child runs, on both stores, with a worker in this process."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import pytest

import perdure
from perdure.errors import ChildFailed, InvalidArguments, RunExpired
from perdure.records import RunRecord, RunStatus

from .conftest import running_worker, wait_until

Spans = list[tuple[str, float, float]]


def max_overlap(spans: Spans, key: Callable[[str], str] = lambda name: "") -> dict[str, int]:
    """The most spans of each key that were open at one instant."""
    events = sorted(
        [(start, 1, key(name)) for name, start, _ in spans]
        + [(end, -1, key(name)) for name, _, end in spans]
    )
    open_now: dict[str, int] = {}
    most: dict[str, int] = {}
    for _at, change, group in events:
        open_now[group] = open_now.get(group, 0) + change
        most[group] = max(most.get(group, 0), open_now[group])
    return most


def spans_app(make_app: Callable[..., perdure.App], spans: Spans) -> perdure.App:
    app = make_app()

    @app.task(name="hold", queue="limited")
    async def hold(name: str, seconds: float) -> str:
        start = time.time()
        await asyncio.sleep(seconds)
        spans.append((name, start, time.time()))
        return name

    return app


async def test_a_queue_limit_holds_over_many_slots(make_app: Callable[..., perdure.App]) -> None:
    spans: Spans = []
    app = spans_app(make_app, spans)
    app.queue("limited", concurrency=2)
    task = app.get_task("hold")
    async with running_worker(app, concurrency=10):
        handles = [await task.trigger(f"r{i}", 0.05) for i in range(10)]
        assert [await h.result(timeout=30) for h in handles] == [f"r{i}" for i in range(10)]
    assert max_overlap(spans) == {"": 2}


async def test_a_concurrency_key_limit_holds_per_key(make_app: Callable[..., perdure.App]) -> None:
    spans: Spans = []
    app = spans_app(make_app, spans)
    app.queue("limited", key_concurrency=1)
    task = app.get_task("hold")
    async with running_worker(app, concurrency=10):
        handles = [
            await task.trigger(f"{customer}-{i}", 0.05, concurrency_key=customer)
            for i in range(4)
            for customer in ("a", "b", "c")
        ]
        for handle in handles:
            await handle.result(timeout=30)
    by_customer = max_overlap(spans, key=lambda name: name.split("-")[0])
    assert by_customer == {"a": 1, "b": 1, "c": 1}
    assert max_overlap(spans)[""] > 1  # different keys did run side by side


async def test_a_task_concurrency_limit(make_app: Callable[..., perdure.App]) -> None:
    spans: Spans = []
    app = make_app()

    @app.task(concurrency=1)
    async def single(name: str) -> None:
        start = time.time()
        await asyncio.sleep(0.03)
        spans.append((name, start, time.time()))

    async with running_worker(app, concurrency=8):
        handles = [await single.trigger(str(i)) for i in range(6)]
        for handle in handles:
            await handle.result(timeout=30)
    assert max_overlap(spans) == {"": 1}


async def test_higher_priority_starts_first_and_equals_in_order(
    make_app: Callable[..., perdure.App],
) -> None:
    started: list[str] = []
    app = make_app()

    @app.task()
    async def job(name: str) -> None:
        started.append(name)

    priorities = {"a": 0, "b": 5, "c": 1, "d": 9, "e": 5, "f": 0}
    handles = [await job.trigger(name, priority=p) for name, p in priorities.items()]
    async with running_worker(app, concurrency=1):
        for handle in handles:
            await handle.result(timeout=30)
    assert started == ["d", "b", "e", "c", "a", "f"]


async def test_delay_and_run_at_hold_a_start_back(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task()
    async def stamp() -> float:
        return time.time()

    async with running_worker(app):
        before = time.time()
        delayed = await stamp.trigger(delay=0.4)
        at = await stamp.trigger(run_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3))
        at_started = await at.result(timeout=30)
        delayed_started = await delayed.result(timeout=30)
    assert delayed_started >= before + 0.4
    assert at_started >= before + 0.3


async def test_a_run_not_started_within_its_ttl_expires(
    make_app: Callable[..., perdure.App],
) -> None:
    ran: list[int] = []
    app = make_app()

    @app.task()
    async def late(n: int) -> None:
        ran.append(n)

    expiring = await late.trigger(1, ttl=0.2)
    keeping = await late.trigger(2, ttl=60)
    await asyncio.sleep(0.3)
    async with running_worker(app):
        await keeping.result(timeout=30)
        with pytest.raises(RunExpired, match="ttl"):
            await expiring.result(timeout=30)
        assert await expiring.status() is RunStatus.EXPIRED
    assert ran == [2]


async def test_a_rate_limit_holds_over_every_window(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    app.queue("metered", rate_limit=(3, 0.5))

    @app.task(queue="metered")
    async def call(n: int) -> int:
        return n

    async with running_worker(app, concurrency=10):
        handles = [await call.trigger(i) for i in range(9)]
        for handle in handles:
            await handle.result(timeout=30)
        # the recorded starts (the claims the limiter counted)
        starts = sorted([(await app.store.get_run(h.id)).started_at or 0.0 for h in handles])
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + 0.5]
        assert len(in_window) <= 3, (start, in_window)
    assert starts[-1] - starts[0] >= 2 * 0.5 * 0.9  # nine starts took three windows


async def test_debounce_makes_one_run_with_the_last_arguments(
    make_app: Callable[..., perdure.App],
) -> None:
    ran: list[int] = []
    app = make_app()

    @app.task()
    async def save(version: int) -> int:
        ran.append(version)
        return version

    async with running_worker(app):
        handles = [await save.trigger(v, debounce=("doc-1", 0.3)) for v in range(5)]
        assert len({h.id for h in handles}) == 1
        assert await handles[-1].result(timeout=30) == 4
        # after the burst, a new trigger makes a new run
        later = await save.trigger(9, debounce=("doc-1", 0.0))
        assert later.id != handles[0].id
        assert await later.result(timeout=30) == 9
    assert ran == [4, 9]


async def test_run_options_are_checked(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task()
    async def noop() -> None:
        return None

    with pytest.raises(InvalidArguments, match="priority must be int"):
        await noop.trigger(priority="high")  # type: ignore[call-overload]
    with pytest.raises(InvalidArguments, match="delay or run_at"):
        await noop.trigger(delay=1, run_at=dt.datetime.now(dt.UTC))
    with pytest.raises(InvalidArguments, match="debounce must be"):
        await noop.trigger(debounce="key")  # type: ignore[call-overload]
    with pytest.raises(perdure.errors.ConfigurationError, match="strategy"):
        app.queue("q", strategy="drop")
    await app.close()


def family(make_app: Callable[..., perdure.App], queue: str = "default") -> perdure.App:
    app = make_app()

    @app.task(name="child", queue=queue)
    async def child(n: int) -> int:
        if n < 0:
            raise perdure.NonRetryableError(f"bad input {n}")
        return n * 10

    @app.task(name="parent", queue=queue)
    async def parent(count: int) -> list[int | str]:
        one = await child.trigger_and_wait(1)
        many = await child.batch_trigger_and_wait([(n,) for n in range(count)])
        return [one, *(r if isinstance(r, int) else f"failed:{r.run_id}" for r in many)]

    return app


async def test_a_parent_waits_for_its_children(make_app: Callable[..., perdure.App]) -> None:
    app = family(make_app)
    async with running_worker(app, concurrency=8):
        handle = await app.get_task("parent").trigger(5)
        assert await handle.result(timeout=30) == [10, 0, 10, 20, 30, 40]


async def test_children_just_made_are_read_once_they_have_ended(
    make_app: Callable[..., perdure.App],
) -> None:
    """A wait right after the trigger that made its children suspends the parent without
    reading them (they were made a moment ago: a fan-out of 1,000 saves a read of 1,000 runs);
    the parent reads them once, when they have all ended. A replayed trigger's wait reads."""
    app = family(make_app)
    reads: list[int] = []
    get_runs = app.store.get_runs

    async def counted(ids: list[str]) -> list[RunRecord]:
        reads.append(len(ids))
        return await get_runs(ids)

    app.store.get_runs = counted  # type: ignore[method-assign,assignment]
    async with running_worker(app, concurrency=8):
        handle = await app.get_task("parent").trigger(5)
        assert await handle.result(timeout=30) == [10, 0, 10, 20, 30, 40]
    # the first wait's child once; the batch's five once (the parent's third pass), and the
    # first child's recorded result is not read again
    assert reads == [1, 5]


async def test_a_failed_child_takes_its_place_and_the_others_are_kept(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(name="child", retry=perdure.Retry(max_attempts=1))
    async def child(n: int) -> int:
        if n < 0:
            raise ValueError(f"bad input {n}")
        return n

    @app.task()
    async def gather() -> list[int | str]:
        results = await child.batch_trigger_and_wait([(1,), (-2,), (3,)])
        return [r if isinstance(r, int) else f"{r.status}: {r.error_message}" for r in results]

    @app.task()
    async def one() -> str:
        try:
            await child.trigger_and_wait(-1)
        except ChildFailed as exc:
            return f"{exc.status}: {exc.error_message}"
        return "no error"

    async with running_worker(app, concurrency=4):
        assert await (await one.trigger()).result(timeout=30) == "failed: bad input -1"
        assert await (await gather.trigger()).result(timeout=30) == [1, "failed: bad input -2", 3]


async def test_a_waiting_parent_holds_no_slot(make_app: Callable[..., perdure.App]) -> None:
    """Parent and 50 children on one queue with limit 1: no deadlock."""
    app = family(make_app, queue="narrow")
    app.queue("narrow", concurrency=1)
    async with running_worker(app, concurrency=4):
        handle = await app.get_task("parent").trigger(50)
        result = await handle.result(timeout=120)
    assert result == [10, *(n * 10 for n in range(50))]


async def test_cancelling_a_parent_cancels_its_children(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(name="slow_child")
    async def slow_child(n: int) -> int:
        await perdure.sleep(60)
        return n

    @app.task()
    async def parent() -> list[int | ChildFailed]:
        return await slow_child.batch_trigger_and_wait([(n,) for n in range(3)])

    async with running_worker(app, concurrency=4):
        handle = await parent.trigger()

        async def children_sleep() -> bool:
            runs = await app.store.list_runs(task="slow_child")
            return len(runs) == 3 and all(r.status is RunStatus.WAITING for r in runs)

        await wait_until(children_sleep)
        await handle.cancel()
        await wait_until(lambda: handle.status())
        runs = await app.store.list_runs(task="slow_child")
        assert {r.status for r in runs} == {RunStatus.CANCELLED}
        assert await handle.status() is RunStatus.CANCELLED


async def test_cancel_newest_strategy(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    app.queue("one_at_a_time", concurrency=1, strategy="cancel-newest")
    gate = asyncio.Event()

    @app.task(queue="one_at_a_time")
    async def exclusive(n: int) -> int:
        await gate.wait()
        return n

    async with running_worker(app, concurrency=4):
        first = await exclusive.trigger(1)
        await wait_until(lambda: app.store.get_run(first.id), timeout=10)
        await wait_until(
            lambda: _status_is(first, RunStatus.RUNNING),
        )
        second = await exclusive.trigger(2)
        await wait_until(lambda: _status_is(second, RunStatus.CANCELLED))
        gate.set()
        assert await first.result(timeout=30) == 1


async def _status_is(handle: perdure.RunHandle[int], status: RunStatus) -> bool:
    return await handle.status() is status


async def test_a_queue_limit_changes_at_run_time(make_app: Callable[..., perdure.App]) -> None:
    spans: Spans = []
    app = spans_app(make_app, spans)
    app.queue("limited", concurrency=1)
    task = app.get_task("hold")
    async with running_worker(app, concurrency=10):
        first = [await task.trigger(f"a{i}", 0.05) for i in range(3)]
        for handle in first:
            await handle.result(timeout=30)
        changed = await app.store.set_queue(app.name, "limited", concurrency=3)
        assert changed.concurrency == 3
        spans.clear()
        second = [await task.trigger(f"b{i}", 0.1) for i in range(6)]
        for handle in second:
            await handle.result(timeout=30)
    assert max_overlap(spans) == {"": 3}
    (stats,) = [q for q in await app.store.queue_stats(app.name) if q.config.name == "limited"]
    assert stats.overridden
    assert stats.config.concurrency == 3


async def test_a_paused_queue_starts_nothing_until_resumed(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(queue="pausable")
    async def job() -> str:
        return "done"

    await app.store.set_queue(app.name, "pausable", paused=True)
    async with running_worker(app):
        handle = await job.trigger()
        await asyncio.sleep(0.5)
        assert await handle.status() is RunStatus.QUEUED
        await app.store.set_queue(app.name, "pausable", paused=False)
        assert await handle.result(timeout=30) == "done"


async def test_concurrency_keys_take_turns(make_app: Callable[..., perdure.App]) -> None:
    """One busy customer cannot starve the others."""
    started: list[str] = []
    app = make_app()
    app.queue("fair", concurrency=1)

    @app.task(queue="fair")
    async def job(name: str) -> None:
        started.append(name)

    handles = [await job.trigger(f"big{i}", concurrency_key="big") for i in range(5)]
    handles.append(await job.trigger("small0", concurrency_key="small"))
    async with running_worker(app, concurrency=4):
        for handle in handles:
            await handle.result(timeout=30)
    assert started.index("small0") <= 1, started


async def test_cancel_in_progress_strategy(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    app.queue("latest_wins", key_concurrency=1, strategy="cancel-in-progress")

    @app.task(queue="latest_wins")
    async def render(version: int) -> int:
        await asyncio.sleep(60 if version == 1 else 0)
        return version

    async with running_worker(app, concurrency=4):
        old = await render.trigger(1, concurrency_key="doc")
        await wait_until(lambda: _status_is(old, RunStatus.RUNNING))
        new = await render.trigger(2, concurrency_key="doc")
        assert await new.result(timeout=30) == 2
        assert await old.status() is RunStatus.CANCELLED


async def test_a_rate_limit_per_key(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    app.queue("per_customer", rate_limit=(2, 0.5), rate_by_key=True)

    @app.task(queue="per_customer")
    async def call(n: int) -> int:
        return n

    async with running_worker(app, concurrency=10):
        handles = {
            key: [await call.trigger(i, concurrency_key=key) for i in range(4)]
            for key in ("a", "b")
        }
        for group in handles.values():
            for handle in group:
                await handle.result(timeout=30)
        starts = {
            key: sorted([(await app.store.get_run(h.id)).started_at or 0.0 for h in group])
            for key, group in handles.items()
        }
    for times in starts.values():
        for i, start in enumerate(times):
            assert len([s for s in times[i:] if s < start + 0.5]) <= 2
    # the keys are counted apart: both keys' first two started in the first window
    assert max(starts["a"][1], starts["b"][1]) - min(starts["a"][0], starts["b"][0]) < 0.5


async def test_idempotency_keys_of_batches_and_of_awaited_children(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(name="echo")
    async def echo(n: int) -> int:
        return n

    @app.task()
    async def parent() -> int:
        # the key is scoped to this parent: an outside run with the same key is not its child
        return await echo.trigger_and_wait(7, idempotency_key="shared")

    outside = await echo.trigger(1, idempotency_key="shared")
    first = await echo.batch_trigger([(1,), (2,), (3,)], idempotency_key="batch")
    again = await echo.batch_trigger([(1,), (2,), (3,)], idempotency_key="batch")
    assert [h.id for h in first] == [h.id for h in again]  # the same runs
    assert len({h.id for h in first}) == 3  # one per item
    async with running_worker(app, concurrency=4):
        assert await (await parent.trigger()).result(timeout=30) == 7
        assert await outside.result(timeout=30) == 1
