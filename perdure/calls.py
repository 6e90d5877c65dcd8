"""Calling user code, a step's or a task's body: on the event loop, or in the worker's step
threads when it is sync; within its timeout, even when the body swallows the cancellation;
and never ending the worker, whatever it raises (SystemExit, KeyboardInterrupt)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from perdure.errors import StepExited, StepTimeout
from perdure.worker import StepThreads


def exited(exc: BaseException, what: str) -> StepExited:
    """The error that stands for SystemExit or KeyboardInterrupt raised by user code."""
    detail = f"{type(exc).__name__}({exc})" if str(exc) else type(exc).__name__
    return StepExited(
        f"{what} raised {detail}: code in it tried to end the worker process; it fails without "
        "retries (raise an Exception to fail it, or return to end it)"
    )


async def _contained(body: Coroutine[Any, Any, Any], what: str) -> Any:
    """Await `body`, turning SystemExit and KeyboardInterrupt into StepExited inside this
    coroutine: escaping to the event loop they would end the worker (asyncio re-raises them
    from any task), and every worker that resumed the run would die the same way."""
    try:
        return await body
    except (SystemExit, KeyboardInterrupt) as exc:
        raise exited(exc, what) from exc


async def call_body(
    fn: Callable[..., Any],
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    is_async: bool,
    what: str,
    timeout: float | None,
    threads: StepThreads | None,
) -> Any:
    """Call `fn` (a coroutine function when `is_async`) and return what it returns.

    Past `timeout` seconds StepTimeout is raised at once: an async body is cancelled (if it
    swallows that and returns later, the value is dropped), a sync body cannot be interrupted,
    so its thread is left to it, counted by `threads` until it returns."""
    if is_async:
        if timeout is None:  # no task of its own: cancellation reaches the body directly
            try:
                return await fn(*args, **kwargs)
            except (SystemExit, KeyboardInterrupt) as exc:
                raise exited(exc, what) from exc
        call: asyncio.Future[Any] = asyncio.ensure_future(_contained(fn(*args, **kwargs), what))
        thread: concurrent.futures.Future[Any] | None = None
    else:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        if threads is None:
            call = loop.run_in_executor(None, lambda: context.run(fn, *args, **kwargs))
            thread = None
        else:
            thread = threads.submit(lambda: context.run(fn, *args, **kwargs))
            call = asyncio.wrap_future(thread, loop=loop)
    try:
        done, _ = await asyncio.wait({call}, timeout=timeout)
    except asyncio.CancelledError:
        _let_go(call, thread, threads)
        raise
    if not done:
        _let_go(call, thread, threads)
        raise StepTimeout(f"{what} ran over its timeout of {timeout}s")
    try:
        return call.result()
    except (SystemExit, KeyboardInterrupt) as exc:  # raised in a thread
        raise exited(exc, what) from exc


def _let_go(
    call: asyncio.Future[Any],
    thread: concurrent.futures.Future[Any] | None,
    threads: StepThreads | None,
) -> None:
    """Nobody waits for `call` any more: stop it if it can be stopped, and drop its outcome."""
    call.add_done_callback(_drop_outcome)
    if thread is not None and threads is not None:
        threads.abandon(thread)  # a thread cannot be interrupted: it is held until it returns
    else:
        call.cancel()


def _drop_outcome(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved: a late error is not reported as never retrieved
