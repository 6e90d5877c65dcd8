"""Retries: backoff bounds, every attempt stored, task retries from the last checkpoint."""

from __future__ import annotations

import email.utils
import itertools
import random
import time
from collections.abc import Callable

import pytest

import perdure
from perdure.errors import ConfigurationError, TaskFailed
from perdure.records import RunStatus

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


class _RateLimited(Exception):
    """Shaped like the errors of httpx-based SDKs: an HTTP response with headers."""

    def __init__(self, retry_after: str) -> None:
        super().__init__("429 Too Many Requests")
        self.response = type("Response", (), {"headers": {"retry-after": retry_after}})()


def test_which_errors_a_policy_retries() -> None:
    only = perdure.Retry(retry_on=(ConnectionError, TimeoutError))
    assert only.allows(ConnectionResetError())
    assert not only.allows(ValueError())
    never = perdure.Retry(dont_retry_on=(PermissionError,))
    assert never.allows(ValueError())
    assert not never.allows(PermissionError())
    both = perdure.Retry(retry_on=(OSError,), dont_retry_on=(PermissionError,))
    assert both.allows(ConnectionError())
    assert not both.allows(PermissionError())
    judged = perdure.Retry(should_retry=lambda e: "transient" in str(e))
    assert judged.allows(RuntimeError("transient glitch"))
    assert not judged.allows(RuntimeError("bad request"))
    with pytest.raises(ConfigurationError):
        perdure.Retry(retry_on=ValueError)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        perdure.Retry(dont_retry_on=("ValueError",))  # type: ignore[arg-type]


def test_a_delay_the_error_asks_for_replaces_the_backoff() -> None:
    policy = perdure.Retry(min_timeout=1.0, max_timeout=2.0)
    assert policy.delay(1, error=perdure.RetryAfter(30)) == 30.0
    assert policy.delay(1, error=_RateLimited("7")) == 7.0
    wrapped = RuntimeError("the SDK gave up")
    wrapped.__cause__ = _RateLimited("12")
    assert policy.delay(1, error=wrapped) == 12.0
    dated = _RateLimited(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert 95 <= policy.delay(1, error=dated) <= 101
    assert 1.0 <= policy.delay(1, error=_RateLimited("soon")) < 2.0  # unreadable: the backoff
    assert 1.0 <= policy.delay(1, error=ValueError()) < 2.0
    with pytest.raises(ValueError, match="seconds >= 0"):
        perdure.RetryAfter(-1)


async def test_retry_control_for_llm_apis(make_app: Callable[..., perdure.App]) -> None:
    """Only the errors the policy names are retried, each after the delay it asks for; an error
    the policy refuses fails the step (and the task) at once."""
    app = make_app()
    tries: dict[str, list[float]] = {"limited": [], "refused": []}
    policy = perdure.Retry(
        max_attempts=4,
        min_timeout=0.01,
        max_timeout=0.02,
        retry_on=(_RateLimited, perdure.RetryAfter),
        dont_retry_on=(PermissionError,),
    )

    @app.step(retry=policy)
    async def call_llm(kind: str) -> str:
        tries[kind].append(time.monotonic())
        if kind == "refused":
            raise PermissionError("invalid API key")
        if len(tries[kind]) == 1:
            raise _RateLimited("0.3")
        if len(tries[kind]) == 2:
            raise perdure.RetryAfter(0.2)
        return "answer"

    @app.task(retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def agent(kind: str) -> str:
        result: str = await call_llm(kind)
        return result

    async with running_worker(app):
        assert await (await agent.trigger("limited")).result(timeout=20) == "answer"
        refused = await agent.trigger("refused")
        with pytest.raises(TaskFailed, match="invalid API key"):
            await refused.result(timeout=20)
        run = await app.store.get_run(refused.id)
    first, second, third = tries["limited"]
    assert second - first >= 0.3
    assert third - second >= 0.2
    assert len(tries["refused"]) == 1  # neither the step nor the task retried it
    assert run.attempt == 1


async def test_a_long_retry_after_suspends_the_run(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.step(retry=perdure.Retry(max_attempts=2))
    async def call_llm() -> str:
        raise perdure.RetryAfter(120, "rate limited")

    @app.task
    async def agent() -> str:
        result: str = await call_llm()
        return result

    async with running_worker(app):
        handle = await agent.trigger()
        await wait_until(lambda: _waiting(app, handle.id), timeout=10)
        run = await app.store.get_run(handle.id)
        assert run.available_at is not None
        assert 100 < run.available_at - time.time() <= 120
        await handle.cancel()


async def _waiting(app: perdure.App, run_id: str) -> bool:
    return (await app.store.get_run(run_id)).status is RunStatus.WAITING
