"""Statistics of runs and replays, on both stores: the figures equal those the test computes
from the recorded runs, and a replay runs the same task with the same arguments again."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

import perdure
from perdure.errors import RunNotFound, TaskFailed
from perdure.records import RunStatus

from .conftest import running_worker


def nearest_rank(durations: list[float], p: int) -> float:
    ordered = sorted(durations)
    return ordered[-(-len(ordered) * p // 100) - 1]


async def test_stats_equal_the_figures_of_the_recorded_runs(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def work(n: int) -> int:
        await asyncio.sleep(n / 1000)
        if n % 7 == 0:
            raise ValueError(f"no {n}")
        return n

    @app.task
    async def later() -> None: ...

    handles = [await work.trigger(n) for n in range(1, 41)]
    await later.trigger(delay=3600)  # queued, not ended
    async with running_worker(app):
        for n, h in enumerate(handles, start=1):
            if n % 7:
                assert await h.result(timeout=30) == n
            else:
                with pytest.raises(TaskFailed):
                    await h.result(timeout=30)
        stats = await app.admin.stats(since=3600, buckets=10)

    runs = [await app.store.get_run(h.id, values=False) for h in handles]
    ended = Counter(str(r.status) for r in runs)
    by_task = {t.task.rsplit(".", 1)[-1]: t for t in stats.tasks}
    assert by_task["work"].ended == dict(ended) == {"completed": 35, "failed": 5}
    assert by_task["work"].active == {}
    assert by_task["later"].active == {"queued": 1}
    assert by_task["later"].ended == {}
    durations = [r.finished_at - r.started_at for r in runs]  # type: ignore[operator]
    for p in (50, 95, 99):
        # the middle of its histogram bucket: within 1.2% of the exact nearest rank
        assert by_task["work"].durations[p] == pytest.approx(nearest_rank(durations, p), rel=0.012)
    assert stats.total("failed") == 5
    assert stats.total("queued") == 1
    assert len(stats.throughput) == 10
    assert sum(c for _, c, _ in stats.throughput) == 35
    assert sum(f for _, _, f in stats.throughput) == 5
    last = stats.throughput[-1]
    assert last[1] + last[2] == 40  # all ended in the last six minutes of the hour
    only = await app.admin.stats(since=3600, task=later.name)
    assert [t.task for t in only.tasks] == [later.name]
    with pytest.raises(ValueError, match="start in the past"):
        await app.admin.stats(since=-5)
    await app.close()


async def test_replay_runs_the_task_again_with_the_same_arguments(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    seen: list[tuple[int, str]] = []
    broken = True

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def job(n: int, *, label: str) -> str:
        seen.append((n, label))
        if broken:
            raise RuntimeError("a bug")
        return f"{label}{n}"

    first = await job.trigger(3, label="x", tags=["user:1"], priority=5)
    async with running_worker(app):
        with pytest.raises(TaskFailed):
            await first.result(timeout=30)
        broken = False  # the fix is deployed
        again = await app.admin.replay(first.id)
        assert again.id != first.id
        assert await again.result(timeout=30) == "x3"
    assert seen == [(3, "x"), (3, "x")]
    new = await app.store.get_run(again.id, values=False)
    assert new.tags == ("user:1",)
    assert new.priority == 5
    assert (await app.store.get_run(first.id, values=False)).status is RunStatus.FAILED
    with pytest.raises(RunNotFound):
        await app.admin.replay("run_nope")
    await app.close()


async def test_step_figures_equal_those_of_the_recorded_journals(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    failures: dict[int, int] = {}

    @app.step(retry=perdure.Retry(max_attempts=3, min_timeout=0.001, max_timeout=0.002))
    async def fetch(n: int) -> int:
        failures[n] = failures.get(n, 0) + 1
        if n % 3 == 0 and failures[n] < 3:  # every third run's fetch fails twice
            raise ConnectionError("busy")
        await asyncio.sleep(n / 2000)
        return n

    @app.step
    async def keep(n: int) -> str:
        return "x" * (n * 100)

    @app.task(name="agent")
    async def agent(n: int) -> int:
        await fetch(n)
        return len(await keep(n))

    handles = [await agent.trigger(n) for n in range(1, 13)]
    async with running_worker(app):
        for n, h in enumerate(handles, start=1):
            assert await h.result(timeout=30) == n * 100
        stats = await app.admin.stats(since=3600, task="agent")

    durations, stored, failed_attempts = [], 0, 0
    for h in handles:
        journal = await app.store.load_journal(h.id, values=False)
        steps = [e for e in journal if str(e.kind) == "step"]
        durations += [e.finished_at - e.started_at for e in steps]
        stored += sum(e.value.stored_size for e in steps if e.value is not None)
        run = await app.store.get_run(h.id)
        stored += run.result.stored_size if run.result is not None else 0
        failed_attempts += sum(1 for a in await app.store.load_attempts(h.id) if a.error and a.seq)
    (figures,) = stats.tasks
    assert figures.sampled == 12
    for p in (50, 95, 99):
        assert figures.step_durations[p] == pytest.approx(nearest_rank(durations, p))
    assert failed_attempts == 8  # runs 3, 6, 9, 12: two failed attempts each
    assert figures.retry_rate == pytest.approx(8 / 24)
    assert figures.steps_per_minute == pytest.approx(24 / 60, rel=1e-3)
    assert figures.stored_bytes == stored
    await app.close()
