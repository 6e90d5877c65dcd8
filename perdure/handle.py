"""The handle of a run: its id, and ways to follow it and talk to it from outside."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from perdure import serde
from perdure.errors import PerdureError, RunCancelled, RunExpired, RunTimeout, TaskFailed
from perdure.progress import LOGS, decoded
from perdure.records import RunStatus, Value
from perdure.store.base import ChangeToken
from perdure.store.notify import run_topic

if TYPE_CHECKING:
    from perdure.app import App

R = TypeVar("R")
_UNSET: Any = object()


class RunEvent(NamedTuple):
    """Something that happened to a run (RunHandle.events): kind "status", "metadata",
    "chunk" (data: {"stream", "data"}; position: the chunk's place among the run's), "log" (a
    log line of the run, see perdure.run_logs; its position too) or "keepalive"."""

    kind: str
    data: Any
    position: int | None


T = TypeVar("T")


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

    __slots__ = ("_app", "_result_type", "_since", "created", "id")  # (batches of thousands)

    def __init__(
        self, app: App, run_id: str, result_type: Any = Any, *, since: ChangeToken | None = None
    ) -> None:
        self._app = app
        self.id = run_id
        self._result_type = result_type
        self._since = since  # set by trigger: nothing about the run is known to have changed
        self.created = since is not None
        """True when the trigger that made this handle created the run (False: its
        idempotency key had a run already, or the handle is of an existing run)."""

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    async def status(self) -> RunStatus:
        """The run's current status."""
        return (await self._app.store.get_run(self.id)).status

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish and return its result.

        Raises TaskFailed (with the error's type, message and traceback), RunCancelled, or
        RunTimeout when `timeout` seconds pass first. A run that continued as a new run
        (perdure.continue_as_new) gives the result of the last run of the chain.
        """
        store = self._app.store
        deadline = None if timeout is None else time.monotonic() + timeout
        run_id = self.id  # (then each run it continued as, to the end of the chain)
        topics = (run_topic(run_id),)
        if self._since is not None:
            # just triggered: no need to read the run before it has changed
            since, self._since = self._since, None
            first_wait = 1.0 if timeout is None else min(1.0, timeout)
            await store.wait_for_change(first_wait, topics=topics, since=since)
        while True:
            token = store.change_token()
            known = self._app.results.get(run_id)  # completed in this process: no read
            if known is not None:
                return self._decode(known)
            run = await store.get_run(run_id)
            if run.status is RunStatus.COMPLETED and run.continued_as is not None:
                run_id = run.continued_as  # it continued as a new run: that one's result
                topics = (run_topic(run_id),)
                continue
            if run.status is RunStatus.COMPLETED:
                assert run.result is not None
                return self._decode(run.result)
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
            if run.status is RunStatus.EXPIRED:
                raise RunExpired(
                    f"run {self.id} of task {run.task!r} expired: not started within its ttl"
                )
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise RunTimeout(
                        f"run {self.id} of task {run.task!r} is still {run.status} after {timeout}s"
                    )
            await store.wait_for_change(wait, topics=topics, since=token)

    def _decode(self, result: Value) -> R:
        value: R = serde.decode(
            result.data,
            codec=serde.Codec(result.codec),
            type_=self._result_type,
            what=f"result of run {self.id}",
        )
        return value

    def result_sync(self, timeout: float | None = None) -> R:
        """result() for synchronous callers."""
        return run_sync(self._app, self.result(timeout))

    async def cancel(self) -> RunStatus:
        """Cancel the run: at once if it is queued or sleeping, else at its next await."""
        return await self._app.store.cancel_run(self.id)

    def cancel_sync(self) -> RunStatus:
        """cancel() for synchronous callers."""
        return run_sync(self._app, self.cancel())

    async def replay(
        self,
        *,
        from_step: int | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> RunHandle[R]:
        """A new run of the same task, linked to this one, with its arguments (or `args` and
        `kwargs`); with `from_step` N it reuses the results recorded before journal position N
        and runs from N on (after a fix: the steps before the one that failed are not paid for
        again)."""
        handle = await self._app.admin.replay(
            self.id, from_step=from_step, args=args, kwargs=kwargs
        )
        return RunHandle(self._app, handle.id, self._result_type)

    async def complete_token(self, name: str, data: Any = None) -> None:
        """Complete the run's token `name` (its perdure.wait_for_token(name)) with `data`. A
        completion that comes before the run reaches its wait is kept; a second completion is
        refused with TokenAlreadyCompleted."""
        await self._app.signals.complete_token(data, run_id=self.id, name=name)

    async def send(
        self, topic: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        """Put `data` in the run's mailbox on `topic`, for its perdure.receive(topic): FIFO,
        each message received once. Returns the message id (a repeated idempotency key sends
        nothing again and returns the first message's)."""
        return await self._app.signals.send_message(
            self.id, topic, data, idempotency_key=idempotency_key
        )

    async def metadata(self) -> dict[str, Any]:
        """The run's metadata as its code last set it (perdure.metadata.set)."""
        run = await self._app.store.get_run(self.id)
        found = decoded(run.metadata, f"metadata of run {self.id}")
        return dict(found) if isinstance(found, dict) else {}

    async def stream(self, name: str, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """Every chunk of the run's stream `name`, from the first, as they come, until the run
        ends (RunTimeout after `timeout` seconds without it ending): `async for token in
        handle.stream("answer"): ...`. (The run's events, filtered.)"""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = RunStatus.QUEUED
        async for event in self.events(keepalive=1.0):
            if event.kind == "chunk" and event.data["stream"] == name:
                yield event.data["data"]
            elif event.kind == "status":
                status = RunStatus(event.data["status"])
            if deadline is not None and time.monotonic() >= deadline and not status.terminal:
                raise RunTimeout(f"run {self.id} is still {status} after {timeout}s")

    async def events(self, *, after: int = 0, keepalive: float = 15.0) -> AsyncIterator[RunEvent]:
        """What happens to the run, as it happens, until it ends: its status when it changes,
        its metadata when it changes, and every stream chunk after position `after` (a
        subscriber that reconnects passes the last chunk position it saw); a `keepalive` event
        after `keepalive` seconds of quiet. The status and metadata come first as they are."""
        store = self._app.store
        status: str | None = None
        metadata: Any = _UNSET
        while True:
            token = store.change_token()
            chunks = await store.read_stream(self.id, None, after=after)
            for seq, name, value in chunks:
                after = seq
                data = decoded(value, f"chunk of stream {name!r}")
                if name == LOGS:
                    yield RunEvent("log", data, seq)
                else:
                    yield RunEvent("chunk", {"stream": name, "data": data}, seq)
            run = await store.get_run(self.id)
            if str(run.status) != status:
                status = str(run.status)
                yield RunEvent("status", {"status": status}, None)
            now = decoded(run.metadata, f"metadata of run {self.id}") or {}
            if now != metadata:
                metadata = now
                yield RunEvent("metadata", now, None)
            if chunks:
                continue
            if run.status.terminal:
                if not await store.read_stream(self.id, None, after=after, limit=1):
                    return
                continue
            if not await store.wait_for_change(
                keepalive, topics=(run_topic(self.id),), since=token
            ):
                yield RunEvent("keepalive", None, None)
