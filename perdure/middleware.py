"""Middleware: code that wraps every execution of a run and every attempt of a step's body, to
inject clients, tenant context or tracing. Each is a function of the `Call` that returns an
async context manager; they are entered in the order they were added (the first is the
outermost) and left in reverse:

    @app.middleware
    @contextlib.asynccontextmanager
    async def tenant(call: perdure.Call) -> AsyncIterator[None]:
        token = TENANT.set(lookup_tenant(call.run_id))
        try:
            yield
        finally:
            TENANT.reset(token)

A run's middleware wraps each of its executions (the first, and each resume after a sleep, a
wait, a retry or a crash: its body replays from the top inside it). A step's middleware wraps
each attempt of the step's body that runs — never a step replayed from the journal, which runs
nothing. What a middleware sets in context variables, the body sees, in its thread too for sync
code. A middleware that raises fails the attempt it wraps, as the body would."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """What a middleware wraps: an execution of a run, or an attempt of a step's body."""

    kind: Literal["run", "step"]
    """"run" or "step"."""
    run_id: str
    """The run."""
    task: str
    """Its task."""
    attempt: int
    """The run's attempt (kind "run") or the step's attempt (kind "step"), from 1."""
    step: str | None = None
    """The step's name (kind "step")."""
    seq: int | None = None
    """The step's journal position (kind "step")."""


Middleware = Callable[[Call], contextlib.AbstractAsyncContextManager[Any]]
"""A function of the Call that returns an async context manager."""


async def around(
    middleware: Sequence[Middleware], call: Call, body: Callable[[], Awaitable[T]]
) -> T:
    """Await `body()` inside every one of `middleware` for `call` (nothing added without
    any)."""
    if not middleware:
        return await body()
    async with contextlib.AsyncExitStack() as stack:
        for wrap in middleware:
            await stack.enter_async_context(wrap(call))
        return await body()
