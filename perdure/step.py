"""Steps: checkpointed calls. Inside a run, a step call takes the next journal position at call
time (so `asyncio.gather` over steps is deterministic), replays a recorded result or error, or
runs the body with retries and records the outcome exactly once. Outside a run, a step is a plain
call of its function."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import typing
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from perdure import metrics, serde, tracing
from perdure.calls import call_body
from perdure.context import (
    ActiveStep,
    RunContext,
    _in_step,
    current,
    in_thread_of_loop,
)
from perdure.errors import (
    CancelSignal,
    PerdureError,
    Suspend,
)
from perdure.journal import error_info, step_failed
from perdure.middleware import Call, around
from perdure.records import EntryKind, EntryStatus
from perdure.retry import DEFAULT_RETRY, Retry

log = logging.getLogger("perdure.run")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
P = ParamSpec("P")
R = TypeVar("R")


class Step(Generic[P, R]):
    """A step function: call it like the function it wraps (`R` is that function's return type,
    a coroutine for `async def` steps, so `await step(...)` is typed as usual).

    A sync step called from an async task runs in the worker's thread pool and returns an
    awaitable: `await step(...)` (type checkers see the sync signature there; prefer async
    steps in async tasks and sync steps in sync tasks)."""

    def __init__(
        self, fn: Callable[P, R], *, name: str, retry: Retry | None, timeout: float | None
    ) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry or DEFAULT_RETRY
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.what = f"step {name!r}"
        """The step in messages."""
        self._return_type: Any = None
        functools.update_wrapper(self, fn)

    @property
    def return_type(self) -> Any:
        """Type the recorded result decodes to."""
        if self._return_type is None:
            self._return_type = serde.return_type(self.fn)
        return self._return_type

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = current()
        if ctx is None or _in_step.get() is not None:
            return self.fn(*args, **kwargs)  # outside a run, or a step called from a step
        seq = ctx.journal.next_seq()  # at call time, before any await: deterministic under gather
        coro = execute_step(ctx, self, seq, args, kwargs)
        if in_thread_of_loop(ctx):
            return typing.cast(R, coro)
        # a sync task's thread: run on the worker loop and wait
        return typing.cast(R, asyncio.run_coroutine_threadsafe(coro, ctx.loop).result())

    def __repr__(self) -> str:
        return f"<perdure step {self.name!r}>"


def step_key() -> str:
    """A key for the step call whose body is running: the run's id and the step's journal
    position, the same on every attempt and after every crash, and different for every other
    step call. Hand it to external systems as an idempotency key (a payment, an email), so a
    body that runs again after a crash does not act twice."""
    step = _in_step.get()
    if step is None:
        raise PerdureError(
            "perdure.step_key() is only available inside a step body (it names one step call)"
        )
    return step.key


async def _run_body(
    ctx: RunContext,
    step: Step[Any, Any],
    seq: int,
    attempt: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    token = _in_step.set(ActiveStep(step.name, f"{ctx.run.id}:{seq}", seq, attempt))
    try:
        body = functools.partial(
            call_body,
            step.fn,
            args,
            kwargs,
            is_async=step.is_async,
            what=step.what,
            timeout=step.timeout,
            threads=ctx.control.threads,
        )
        if not ctx.middleware:
            return await body()
        call = Call(
            kind="step",
            run_id=ctx.run.id,
            task=ctx.task.name,
            attempt=attempt,
            step=step.name,
            seq=seq,
        )
        return await around(ctx.middleware, call, body)
    finally:
        _in_step.reset(token)


async def execute_step(
    ctx: RunContext,
    step: Step[Any, Any],
    seq: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Replay or run the step at `seq` of the current run."""
    journal = ctx.journal
    entry = journal.recorded(seq, EntryKind.STEP, step.name)
    if entry is not None:
        if entry.status is EntryStatus.FAILED:
            raise step_failed(step.name, entry.error)
        return journal.decode(entry, step.return_type)
    attempt = journal.step_attempts.get(seq, 0)
    first_started = ctx.store.now()
    while True:
        attempt += 1
        await journal.flush()  # earlier records are durable before this body's side effects
        ctx.check_active()
        if ctx.control.vouch is not None:
            await ctx.control.vouch()  # this worker still holds the run
        started = ctx.store.now()
        span = tracing.step(ctx.span, ctx.run.id, ctx.task.name, step.name, seq, attempt)
        try:
            result = await _run_body(ctx, step, seq, attempt, args, kwargs)
            entry, data = journal.entry(
                seq, EntryKind.STEP, step.name, result, first_started, attempt=(attempt, started)
            )
            entry = await journal.offload(entry)
        except Exception as exc:
            info = error_info(exc, policy=step.retry)
            retried = info.retryable and attempt < step.retry.max_attempts
            outcome = "retried" if retried else "failed"
            span.end(outcome, error=exc)
            ctx.check_active()
            journal.record_attempt(journal.attempt(seq, attempt, started, info))
            metrics.step_ended(ctx.task.name, step.name, ctx.store.now() - started, outcome)
            if retried:
                delay = step.retry.delay(attempt, error=exc)
                log.warning(
                    "step %s attempt %d failed (%s: %s); retrying in %.2fs",
                    step.name,
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra=_extra(ctx, step.name, attempt, "step_retry"),
                )
                if delay >= ctx.config.retry_suspend_after:
                    raise Suspend(ctx.store.now() + delay, waiting_for="retry") from None
                await asyncio.sleep(delay)
                continue
            journal.failed(seq, EntryKind.STEP, step.name, info, first_started)
            log.warning(
                "step %s failed after %d attempt(s): %s: %s",
                step.name,
                attempt,
                type(exc).__name__,
                exc,
                extra=_extra(ctx, step.name, attempt, "step_failed"),
            )
            raise step_failed(step.name, info) from exc
        except BaseException:  # cancelled, released, stopped: the attempt did not end
            span.end("interrupted")
            raise
        value = entry.value
        size, in_blob = (value.raw_size, value.blob_key is not None) if value else (0, False)
        span.end("completed", size=size, in_blob=in_blob)
        ctx.check_active()
        journal.record(entry)  # with the attempt that produced it
        metrics.step_ended(ctx.task.name, step.name, ctx.store.now() - started, "completed")
        metrics.stored(size, in_blob=in_blob)
        if ctx.config.replay_each_step:  # resume from the top now, as after a crash here
            ctx.control.stop_reason = "release"
            raise CancelSignal("release")
        # hand back what a replay would: the decoded record, not the live object (for a value
        # that decodes to itself, the value: no second copy of a large bytes or str)
        if type(result) in _SELF_DECODING and step.return_type in (Any, type(result)):
            return result
        return serde.decode(data, codec=ctx.task.codec, type_=step.return_type, what=step.name)


_SELF_DECODING = (bytes, str, int, float, bool, type(None))
"""Types whose recorded value decodes (with their own type, or Any) to an equal value."""


def _extra(ctx: RunContext, step: str, attempt: int, action: str) -> dict[str, Any]:
    return {
        "run_id": ctx.run.id,
        "task": ctx.task.name,
        "step": step,
        "attempt": attempt,
        "action": action,
    }
