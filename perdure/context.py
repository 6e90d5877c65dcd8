"""The run context: what a task's code sees while it runs on a worker (the run and its lease,
its journal, the worker's stop requests), reachable from steps and waits through a
ContextVar."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

# progress imports this module too: as modules, either may load first
from perdure import progress, serde
from perdure.config import WorkerConfig
from perdure.errors import CancelSignal
from perdure.journal import Journal
from perdure.middleware import Middleware
from perdure.records import RunRecord
from perdure.retry import Retry
from perdure.store.base import Store
from perdure.worker import RunControl

log = logging.getLogger("perdure.run")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """What the runtime needs to know about a task to execute it."""

    name: str
    """Registered name."""
    retry: Retry
    """Task-level retry policy."""
    timeout: float | None
    """Seconds one attempt may run on a worker; None for no limit."""
    codec: serde.Codec
    """Codec of every value the task's runs store."""
    max_value_size: int
    """Encoded values above this many bytes are refused (PayloadTooLarge)."""
    max_steps: int | None = None
    """Journal positions a run may take (None: no bound); past it, TooManySteps."""


@dataclass(slots=True, kw_only=True)
class RunContext:
    """The state of one execution of one run on one worker."""

    run: RunRecord
    """The claimed run (its lease fences every write)."""
    task: TaskOptions
    """The task being run."""
    store: Store
    """Where the journal lives."""
    control: RunControl
    """Stop requests from the worker."""
    config: WorkerConfig
    """Worker settings."""
    loop: asyncio.AbstractEventLoop
    """The worker's event loop (sync tasks run in threads and call back into it)."""
    journal: Journal
    """The run's journal: replay, positions, recording."""
    span: Any = None
    """Its execution's trace span (perdure.tracing), None when it is not traced."""
    middleware: tuple[Middleware, ...] = ()
    """What wraps each attempt of a step's body (perdure.middleware)."""
    closed: bool = False
    """Set when the execution ended; late step calls (orphans of a gather) then stop."""
    _data: progress.RunData | None = field(default=None, init=False, repr=False)

    @property
    def data(self) -> progress.RunData:
        """Its metadata, streams and log lines (perdure.metadata, perdure.stream, run logs),
        made on first use (from the loop or a step's thread): most runs use none of them."""
        if self._data is None:
            with _making_data:
                if self._data is None:
                    self._data = progress.RunData(self)
        return self._data

    async def flush_data(self) -> None:
        """Wait for its metadata and log lines being written (see RunData.flush)."""
        if self._data is not None:
            await self._data.flush()

    def check_active(self) -> None:
        """Stop the run here if it was cancelled, released or has ended."""
        if self.closed or self.control.stop_reason is not None:
            raise CancelSignal(self.control.stop_reason or "closed")


_making_data = threading.Lock()

_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "perdure_run", default=None
)


@dataclass(frozen=True, slots=True)
class ActiveStep:
    """The step whose body is running (in this context)."""

    name: str
    """Step name."""
    key: str
    """`run id:journal position`: the same for every attempt and replay of this step call."""
    seq: int = 0
    """Its journal position."""
    attempt: int = 1
    """Which attempt of it this is."""


_in_step: contextvars.ContextVar[ActiveStep | None] = contextvars.ContextVar(
    "perdure_step", default=None
)


def current() -> RunContext | None:
    """The run context of the calling code, or None outside a run."""
    return _current.get()


def in_step() -> bool:
    """True inside a step body (where durable calls are plain calls)."""
    return _in_step.get() is not None


def activate(ctx: RunContext) -> contextvars.Token[RunContext | None]:
    """Make `ctx` the current run context."""
    return _current.set(ctx)


def in_thread_of_loop(ctx: RunContext) -> bool:
    """True when called on the worker's event loop thread (async code)."""
    try:
        return asyncio.get_running_loop() is ctx.loop
    except RuntimeError:
        return False
