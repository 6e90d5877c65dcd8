"""The server's side of the worker API (see perdure.store.remote): a hybrid worker's store
operations run on the App's store, its change polls wait on the App's store's changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from perdure.store.remote import (
    CLOCK_HEADER,
    POLL_SECONDS,
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

    def now(self) -> float:
        """The store's clock, which the workers keep their time by."""
        return self.app.store.now()

    async def call(self, op: str, body: bytes) -> bytes:
        """Run the store operation `op` with the arguments in `body`; its encoded result."""
        arguments = decode_call(op, body)
        result = await getattr(self.app.store, op)(**arguments)
        return encode_result(result)

    async def changes(self, body: bytes) -> bytes:
        """Answer a change poll (ChangePoll) once something it asks about changed, or after
        its timeout (at most POLL_SECONDS)."""
        poll = msgspec.msgpack.decode(body or msgspec.msgpack.encode(ChangePoll()), type=ChangePoll)
        store = self.app.store
        if poll.since is None:
            return msgspec.msgpack.encode(Changes(token=store.change_token()))
        topics = None if poll.topics is None else frozenset(poll.topics)
        if not store.changed_since(poll.since, topics):
            timeout = max(0.0, min(poll.timeout, POLL_SECONDS))
            await store.wait_for_change(timeout, topics=topics, since=poll.since)
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
        try:
            while True:
                yield b"."
                await asyncio.sleep(SESSION_TICK)
        finally:  # cancelled by the disconnection: reap in a task of its own
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
