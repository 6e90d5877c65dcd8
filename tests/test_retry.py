"""Retries: backoff bounds, every attempt stored, task retries from the last checkpoint."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

import perdure
from perdure.errors import ConfigurationError, TaskFailed
from perdure.store.base import RunStatus

from .conftest import running_worker, wait_until


def test_backoff_follows_the_formula_within_jitter() -> None:
    policy = perdure.Retry(max_attempts=10, factor=2.0, min_timeout=1.0, max_timeout=60.0)
    rng = random.Random(7)
    for n in range(1, 10):
        base = min(60.0, 1.0 * 2.0 ** (n - 1))
        for _ in range(200):
            assert base <= policy.delay(n, rng) < 2 * base
    exact = perdure.Retry(factor=3.0, min_timeout=0.5, max_timeout=10.0, jitter=False)
    assert [exact.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_defaults_match_the_product_brief() -> None:
    policy = perdure.Retry()
    assert (policy.max_attempts, policy.factor, policy.min_timeout, policy.max_timeout) == (
        3,
        2.0,
        1.0,
        60.0,
    )
    assert policy.jitter is True
    with pytest.raises(ConfigurationError):
        perdure.Retry(max_attempts=0)


async def test_step_retry_waits_between_attempts_and_stores_each(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    policy = perdure.Retry(max_attempts=3, factor=2.0, min_timeout=0.05, max_timeout=1.0)
    tries: list[int] = []

    @app.step(retry=policy)
    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"try {len(tries)}")
        return "ok"

    @app.task
    async def flow() -> str:
        result: str = await flaky()
        return result

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == "ok"
        attempts = [a for a in await app.store.load_attempts(handle.id) if a.seq == 1]
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert [a.error.message if a.error else None for a in attempts] == ["try 1", "try 2", None]
    assert all(a.error is None or "ConnectionError" in a.error.traceback for a in attempts)
    for n, (before, after) in enumerate(itertools.pairwise(attempts), start=1):
        gap = after.started_at - before.finished_at
        base = min(1.0, 0.05 * 2.0 ** (n - 1))
        assert base <= gap < 2 * base + 0.5, (n, gap)


async def test_task_retry_resumes_from_the_last_checkpoint(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def step(name: str) -> str:
        calls.append(name)
        if name == "second" and calls.count("second") == 1:
            raise RuntimeError("first time fails")
        return name

    @app.task(retry=perdure.Retry(max_attempts=2, min_timeout=0.01, max_timeout=0.01))
    async def flow() -> list[str]:
        return [await step("first"), await step("second"), await step("third")]

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == ["first", "second", "third"]
        run = await app.store.get_run(handle.id)
        task_attempts = [a for a in await app.store.load_attempts(handle.id) if a.seq == 0]
    assert calls == ["first", "second", "second", "third"]
    assert run.attempt == 2
    assert [(a.attempt, a.error is not None) for a in task_attempts] == [(1, True), (2, False)]


async def test_non_retryable_error_stops_all_retries(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    calls: list[int] = []

    @app.step(retry=perdure.Retry(max_attempts=5, min_timeout=0.01))
    async def charge() -> None:
        calls.append(1)
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            raise perdure.NonRetryable(exc) from exc

    @app.task(retry=perdure.Retry(max_attempts=5, min_timeout=0.01))
    async def flow() -> None:
        await charge()

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed, match="card declined"):
            await handle.result(timeout=10)
        run = await app.store.get_run(handle.id)
    assert calls == [1]
    assert run.attempt == 1
    assert run.status is RunStatus.FAILED


async def test_long_backoff_suspends_the_run(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    tries: list[int] = []

    @app.step(retry=perdure.Retry(max_attempts=2, min_timeout=0.3, jitter=False))
    async def flaky() -> int:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("later")
        return len(tries)

    @app.task
    async def flow() -> int:
        result: int = await flaky()
        return result

    async with running_worker(app, retry_suspend_after=0.1):
        handle = await flow.trigger()
        await wait_until(lambda: _is_waiting(handle))
        assert await handle.result(timeout=10) == 2


async def _is_waiting(handle: perdure.RunHandle[int]) -> bool:
    return await handle.status() is RunStatus.WAITING
