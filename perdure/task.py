"""Tasks (durable workflows) and the handles of their runs."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from perdure import serde
from perdure.context import TaskOptions, current, decode_entry, in_step
from perdure.errors import (
    ConfigurationError,
    InvalidArguments,
    PerdureError,
    RunCancelled,
    RunTimeout,
    TaskFailed,
)
from perdure.executor import TaskDef, task_return_type
from perdure.ids import new_id
from perdure.retry import DEFAULT_RETRY, Retry
from perdure.store.base import ChangeToken, EntryKind, NewRun, RunStatus
from perdure.store.notify import run_topic

if TYPE_CHECKING:
    from perdure.app import App

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

TRIGGER_OPTIONS = ("idempotency_key",)
"""Keyword arguments of trigger() that configure the run instead of reaching the task."""


def run_sync(app: App, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, on a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_detached(app, coro))
    coro.close()
    raise PerdureError(
        "a *_sync method was called from async code; await the async method instead "
        "(trigger_sync -> await trigger, result_sync -> await result)"
    )


async def _detached(app: App, coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    finally:
        await app.store.detach()  # this loop ends with the call


class RunHandle(Generic[R]):
    """A run: its id, and ways to follow it."""

    def __init__(
        self, app: App, run_id: str, result_type: Any = Any, *, since: ChangeToken | None = None
    ) -> None:
        self._app = app
        self.id = run_id
        self._result_type = result_type
        self._since = since  # set by trigger: nothing about the run is known to have changed

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    async def status(self) -> RunStatus:
        """The run's current status."""
        return (await self._app.store.get_run(self.id)).status

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish and return its result.

        Raises TaskFailed (with the error's type, message and traceback), RunCancelled, or
        RunTimeout when `timeout` seconds pass first.
        """
        store = self._app.store
        deadline = None if timeout is None else time.monotonic() + timeout
        topics = (run_topic(self.id),)
        if self._since is not None:
            # just triggered: no need to read the run before it has changed
            since, self._since = self._since, None
            first_wait = 1.0 if timeout is None else min(1.0, timeout)
            await store.wait_for_change(first_wait, topics=topics, since=since)
        while True:
            token = store.change_token()
            run = await store.get_run(self.id)
            if run.status is RunStatus.COMPLETED:
                assert run.result is not None
                value: R = serde.decode(
                    run.result.data,
                    codec=serde.Codec(run.result.codec),
                    type_=self._result_type,
                    what=f"result of run {self.id}",
                )
                return value
            if run.status is RunStatus.FAILED:
                error = run.error
                raise TaskFailed(
                    f"run {self.id} of task {run.task!r} failed after {run.attempt} attempt(s): "
                    + (f"{error.type.rsplit('.', 1)[-1]}: {error.message}" if error else "unknown"),
                    run_id=self.id,
                    error_type=error.type if error else "",
                    error_message=error.message if error else "",
                    traceback=error.traceback if error else "",
                )
            if run.status is RunStatus.CANCELLED:
                raise RunCancelled(f"run {self.id} of task {run.task!r} was cancelled")
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise RunTimeout(
                        f"run {self.id} of task {run.task!r} is still {run.status} after {timeout}s"
                    )
            await store.wait_for_change(wait, topics=topics, since=token)

    def result_sync(self, timeout: float | None = None) -> R:
        """result() for synchronous callers."""
        return run_sync(self._app, self.result(timeout))

    async def cancel(self) -> RunStatus:
        """Cancel the run: at once if it is queued or sleeping, else at its next await."""
        return await self._app.store.cancel_run(self.id)

    def cancel_sync(self) -> RunStatus:
        """cancel() for synchronous callers."""
        return run_sync(self._app, self.cancel())


class Task(Generic[P, R]):
    """A durable workflow. Trigger runs of it; a worker executes them."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, Any],
        *,
        name: str,
        retry: Retry | None,
        queue: str,
        timeout: float | None,
        serializer: str,
    ) -> None:
        try:
            codec = serde.Codec(serializer)
        except ValueError:
            raise ConfigurationError(
                f"task {name!r}: serializer must be 'msgpack' or 'pickle', got {serializer!r}"
            ) from None
        self.signature = inspect.signature(fn)
        clash = set(TRIGGER_OPTIONS) & set(self.signature.parameters)
        if clash:
            raise ConfigurationError(
                f"task {name!r} has a parameter named {sorted(clash)[0]!r}, which trigger() "
                "reserves for its own options; rename the parameter"
            )
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.definition = TaskDef(
            options=TaskOptions(
                name=name,
                retry=retry or DEFAULT_RETRY,
                timeout=timeout,
                codec=codec,
                max_value_size=app.max_value_size,
            ),
            fn=fn,
        )
        self._result_type: Any = None

    def __repr__(self) -> str:
        return f"<perdure task {self.name!r}>"

    @property
    def result_type(self) -> Any:
        """Type a run's result decodes to."""
        if self._result_type is None:
            self._result_type = task_return_type(self.fn)
        return self._result_type

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the function directly, not durably (for tests and scripts)."""
        return self.fn(*args, **kwargs)

    @overload
    async def trigger(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, idempotency_key: str, **kwargs: Any) -> RunHandle[R]: ...

    async def trigger(self, *args: Any, **kwargs: Any) -> RunHandle[R]:
        """Start a run with these arguments; returns at once with its handle.

        `idempotency_key=` (a keyword reserved for the run, not passed to the task): a second
        trigger with the same key returns the first run instead of starting another. Type
        checkers check the arguments against the task's signature (when run options are given
        too, the arguments are checked at trigger time instead).
        """
        options = {key: kwargs.pop(key) for key in TRIGGER_OPTIONS if key in kwargs}
        return await self._trigger(args, kwargs, idempotency_key=options.get("idempotency_key"))

    @overload
    def trigger_sync(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, idempotency_key: str, **kwargs: Any) -> RunHandle[R]: ...

    def trigger_sync(self, *args: Any, **kwargs: Any) -> RunHandle[R]:
        """trigger() for synchronous callers."""
        return run_sync(self.app, self.trigger(*args, **kwargs))

    async def _trigger(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, idempotency_key: Any
    ) -> RunHandle[R]:
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(
                f"arguments do not fit task {self.name!r}{self.signature}: {exc}"
            ) from None
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise InvalidArguments(
                f"idempotency_key must be a str, got {type(idempotency_key).__name__}"
            )
        value = self.definition.encode_args(args, kwargs)
        since = self.app.store.change_token()
        ctx = current()
        seq = None
        if ctx is not None and not in_step():
            # inside a task: journaled, so a replay returns the same run instead of a new one
            ctx.check_active()
            seq = ctx.next_seq()
            entry = ctx.recorded(seq, EntryKind.TRIGGER, self.name)
            if entry is not None:
                return RunHandle(self.app, decode_entry(ctx, entry, str), self.result_type)
            if idempotency_key is None:  # a crash before the entry is written: same run
                idempotency_key = f"perdure:{ctx.run.id}:{seq}"
        run_id, created = await self.app.store.create_run(
            NewRun(
                id=new_id(),
                app=self.app.name,
                task=self.name,
                queue=self.queue,
                args=value,
                idempotency_key=idempotency_key,
                available_at=time.time(),
            )
        )
        if ctx is not None and seq is not None:
            entry, _data = ctx.value_entry(seq, EntryKind.TRIGGER, self.name, run_id, time.time())
            ctx.pending.append(entry)
        return RunHandle(self.app, run_id, self.result_type, since=since if created else None)
