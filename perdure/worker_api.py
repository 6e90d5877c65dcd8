"""The server's side of the worker API (see perdure.store.remote): a hybrid worker's store
operations run on the App's store, its change polls wait on the App's store's changes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from perdure.errors import PerdureError
from perdure.records import Value
from perdure.store.remote import (
    CLOCK_HEADER,
    POLL_SECONDS,
    Answer,
    ChangePoll,
    Changes,
    decode_call,
    encode_result,
)

if TYPE_CHECKING:
    from perdure.app import App

__all__ = ["CLOCK_HEADER", "WorkerApi"]

log = logging.getLogger("perdure.server")

SESSION_TICK = 1.0
"""Seconds between the bytes a worker's session sends (so a half-open connection is noticed)."""


class WorkerApi:
    """The worker API of `app` (what `perdure server` serves under /api/v1/worker)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._reaping: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Event | None = None

    def _closed_event(self) -> asyncio.Event:
        """Set when the server stops (made in the server's loop on first use)."""
        if self._closed is None:
            self._loop, self._closed = asyncio.get_running_loop(), asyncio.Event()
            if self._closing:
                self._closed.set()
        return self._closed

    def close_sessions(self) -> None:
        """The server is stopping: end every session without reaping its worker (it
        reconnects to the server's next process) and answer every change poll now. Safe to
        call from a signal handler."""
        self._closing = True
        if self._loop is not None and self._closed is not None:
            self._loop.call_soon_threadsafe(self._closed.set)

    def now(self) -> float:
        """The store's clock, which the workers keep their time by."""
        return self.app.store.now()

    async def batch(self, body: bytes) -> bytes:
        """Run the calls of a batch (each a store operation and its encoded arguments) at
        once; their answers, in order: a result, or the perdure error a call raised."""
        calls = msgspec.msgpack.decode(body, type=list[tuple[str, bytes]])
        answers = await asyncio.gather(*(self._call(op, data) for op, data in calls))
        return msgspec.msgpack.encode(answers)

    async def _call(self, op: str, data: bytes) -> Answer:
        try:
            arguments = decode_call(op, data)
            result = await getattr(self.app.store, op)(**arguments)
            if isinstance(result, Value) and result.blob_key is not None:
                result = dataclasses.replace(result, data=b"")  # (offload) its reference is enough
            return Answer(data=encode_result(result))
        except PerdureError as exc:
            return Answer(error=type(exc).__name__, message=str(exc))
        except msgspec.ValidationError as exc:
            return Answer(error="PerdureError", message=f"{op}: arguments that do not fit: {exc}")
        except Exception as exc:
            log.exception("worker API call %s failed", op)
            return Answer(error="PerdureError", message=f"{op} failed: {type(exc).__name__}: {exc}")

    async def upload(self, body: bytes) -> bytes:
        """An UploadTicket (or None) for the blob whose content key the body holds: a hybrid
        worker puts a large value into the object store itself, not through this server."""
        key = msgspec.msgpack.decode(body, type=str)
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"upload: {key!r} is not a content key (64 hex digits)")
        return msgspec.msgpack.encode(await self.app.store.blobs.upload_ticket(key))

    async def changes(self, body: bytes) -> bytes:
        """Answer a change poll (ChangePoll) once something it asks about changed, or after
        its timeout (at most POLL_SECONDS)."""
        poll = msgspec.msgpack.decode(body or msgspec.msgpack.encode(ChangePoll()), type=ChangePoll)
        store = self.app.store
        if poll.since is None:
            return msgspec.msgpack.encode(Changes(token=store.change_token()))
        topics = None if poll.topics is None else frozenset(poll.topics)
        if not store.changed_since(poll.since, topics) and not self._closing:
            timeout = max(0.0, min(poll.timeout, POLL_SECONDS))
            change = asyncio.ensure_future(
                store.wait_for_change(timeout, topics=topics, since=poll.since)
            )
            closing = asyncio.ensure_future(self._closed_event().wait())
            await asyncio.wait({change, closing}, return_when=asyncio.FIRST_COMPLETED)
            for waiting in (change, closing):
                waiting.cancel()
        token = store.change_token()
        changed: list[str] | None
        if topics is None:
            changed = None if store.changed_since(poll.since, None) else []
        else:
            changed = [t for t in sorted(topics) if store.changed_since(poll.since, (t,))]
        return msgspec.msgpack.encode(Changes(token=token, changed=changed))

    async def session(self, worker_id: str) -> AsyncIterator[bytes]:
        """A hybrid worker's session: a byte every SESSION_TICK seconds for as long as the
        worker holds the connection open. When it closes (the worker's process died, its host
        went away, or it stopped), the worker is reaped at once: its runs go back to the queue
        for other workers (a worker that stopped holds none; one still alive finds its runs
        taken over, its late writes refused by their leases)."""
        closed = self._closed_event()
        try:
            while not self._closing:
                yield b"."
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), SESSION_TICK)
        finally:  # ended by the disconnection (cancelled), unless the server is stopping
            if not self._closing:
                task = asyncio.get_running_loop().create_task(self._reap(worker_id))
                self._reaping.add(task)
                task.add_done_callback(self._reaping.discard)

    async def _reap(self, worker_id: str) -> None:
        try:
            reason = "lost its connection to the server"
            requeued = await self.app.store.reap_workers([worker_id], reason=reason)
        except Exception:
            log.exception("could not reap worker %s after its session closed", worker_id)
            return
        if requeued:
            log.warning(
                "worker %s lost its connection: %d run(s) requeued",
                worker_id,
                requeued,
                extra={"worker_id": worker_id, "action": "worker_reaped"},
            )
