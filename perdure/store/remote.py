"""A store reached through a perdure server's worker API: what a hybrid worker
(`perdure worker MODULE:APP --server URL --api-key KEY`) runs on, with no database of its own.

Each `Store` operation a worker uses is a call in `POST /api/v1/worker/batch` (the calls made at
once share a request), its arguments and result encoded with msgspec (MessagePack) and typed by
the `Store` protocol's own annotations, so no operation is written twice: the server runs the
same operation on its store, with the same lease fencing. Errors come back as the perdure
errors the store raised. Change notifications arrive by long polling (`/api/v1/worker/changes`);
the server's clock is the store's clock. Requests that cannot reach the server are retried
with backoff until it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
import typing
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from perdure import errors
from perdure.blobs.base import BlobStore, UploadTicket, content_key, pack
from perdure.crypto import Keyring
from perdure.records import Claimed, History, RunRecord, Value, WorkerRecord
from perdure.store.base import ChangeToken, Store
from perdure.store.notify import ChangeNotifier
from perdure.values import stays_inline

log = logging.getLogger("perdure.worker")

WORKER_OPERATIONS = frozenset(
    {
        # the claim loop, leases and the reaper
        "register_worker",
        "heartbeat",
        "live_workers",
        "reap_workers",
        "deregister_worker",
        "release_strays",
        "note_unclaimable",
        "claim_runs",
        "next_wake_at",
        "expire_runs",
        "refresh_statistics",
        "cancel_requests",
        "declare_queues",
        "put_schedule",
        "prune_declared",
        "fire_schedules",
        "list_schedules",
        "pause_schedule",
        "delete_schedule",
        # executing a run: its history, its records, its end
        "get_run",
        "get_runs",
        "load_journal",
        "load_attempts",
        "append",
        "offload",
        "finish_attempt",
        "mark_hook",
        "set_metadata",
        "append_stream",
        "read_stream",
        # what a task does: child runs, waits, tokens
        "create_run",
        "create_runs",
        "cancel_run",
        "create_token",
        "begin_wait",
    }
)
"""The `Store` operations the worker API serves (to a key of scope `worker`), and only those."""

CLOCK_HEADER = "x-perdure-now"
"""The response header that carries the server's store clock (POSIX seconds)."""

POLL_SECONDS = 20.0
"""How long the server holds a change poll open before answering "nothing yet"."""


class Changes(msgspec.Struct, frozen=True):
    """The answer to a change poll: the server's change token now, and which of the topics
    asked about changed since the one sent (None: something did, topics were not given)."""

    token: int
    changed: list[str] | None = None


class ChangePoll(msgspec.Struct, frozen=True):
    """A change poll: changes since the server's token `since` (None: only tell me the token)
    to any of `topics` (None: any), waiting up to `timeout` seconds."""

    since: int | None = None
    topics: list[str] | None = None
    timeout: float = POLL_SECONDS


class Answer(msgspec.Struct, frozen=True):
    """One call's answer in a batch: its encoded result, or the perdure error it raised."""

    data: bytes | None = None
    error: str | None = None
    message: str | None = None


BATCH_LIMIT = 256
"""Calls sent in one request at most."""


@functools.cache
def _shape(op: str) -> tuple[inspect.Signature, dict[str, Any]]:
    if op not in WORKER_OPERATIONS:
        raise errors.PerdureError(f"{op!r} is not an operation of the worker API")
    method = getattr(Store, op)
    return inspect.signature(method), typing.get_type_hints(method)


def encode_call(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The body of a call of the store operation `op` with these arguments."""
    signature, _hints = _shape(op)
    bound = signature.bind(None, *args, **kwargs)
    named = {name: value for name, value in bound.arguments.items() if name != "self"}
    return msgspec.msgpack.encode(named)


def decode_call(op: str, body: bytes) -> dict[str, Any]:
    """The arguments of a call of `op`, each converted to its annotated type."""
    _signature, hints = _shape(op)
    raw = msgspec.msgpack.decode(body, type=dict[str, msgspec.Raw])
    unknown = sorted(set(raw) - set(hints) - {"return"})
    if unknown:
        raise errors.PerdureError(f"{op}: unknown arguments {unknown}")
    return {name: msgspec.msgpack.decode(value, type=hints[name]) for name, value in raw.items()}


class _ClaimedWire(msgspec.Struct, frozen=True):
    """A Claimed (a list with attributes) as it travels."""

    runs: list[RunRecord]
    histories: dict[str, History]
    retry_at: float | None
    looked: bool
    next_at: float | None
    unreadable: dict[str, str]


def encode_result(value: Any) -> bytes:
    """The encoded result of a store operation."""
    if isinstance(value, Claimed):
        value = _ClaimedWire(
            runs=list(value),
            histories=value.histories,
            retry_at=value.retry_at,
            looked=value.looked,
            next_at=value.next_at,
            unreadable={run_id: str(exc) for run_id, exc in value.unreadable.items()},
        )
    return msgspec.msgpack.encode(value)


def decode_result(op: str, data: bytes) -> Any:
    """The result of the store operation `op`, typed as the Store protocol says."""
    returns = _shape(op)[1]["return"]
    if returns is Claimed:
        wire = msgspec.msgpack.decode(data, type=_ClaimedWire)
        claimed = Claimed(wire.runs)
        claimed.histories = wire.histories
        claimed.retry_at, claimed.looked, claimed.next_at = wire.retry_at, wire.looked, wire.next_at
        claimed.unreadable = {
            run_id: errors.PerdureError(why) for run_id, why in wire.unreadable.items()
        }
        return claimed
    return msgspec.msgpack.decode(data, type=returns)


class RemoteStore:
    """`Store` over a perdure server's worker API (see the module's docstring)."""

    session_liveness = False
    """A remote worker's liveness is the server's business: it sees the worker's connection."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        blobs: BlobStore,
        inline_limit: int,
        keyring: Keyring | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise errors.ConfigurationError(
                "a hybrid worker (--server) needs httpx: pip install 'perdure[hybrid]'"
            ) from None
        self._httpx = httpx
        quiet = logging.getLogger("httpx")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)  # not a line per request
        self.url = url.rstrip("/")
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.keyring = keyring
        """This worker's keys (PERDURE_ENCRYPTION_KEY): a value it puts into the object store
        itself is encrypted as the server would, when its current key is the server's."""
        self._said: set[str] = set()
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/msgpack",
        }
        self._clients: dict[int, Any] = {}  # one per event loop (the heartbeat has its own)
        self._offset = 0.0  # the server's clock minus this machine's
        self._notifier = ChangeNotifier()
        self._interest: set[str | None] = set()  # the topics asked about (None: anything)
        self._poller: asyncio.Task[None] | None = None
        self._repoll = asyncio.Event()
        self._session: asyncio.Task[None] | None = None
        self._batches: dict[int, list[tuple[str, bytes, asyncio.Future[bytes]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    # -- the calls ---------------------------------------------------------------------------

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            timeout = self._httpx.Timeout(POLL_SECONDS + 30.0, connect=5.0)
            # as many kept-alive connections as calls at once: a closed one costs a handshake
            limits = self._httpx.Limits(max_connections=200, max_keepalive_connections=200)
            client = self._httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)
            self._clients[id(loop)] = client
        return client

    async def _post(self, path: str, body: bytes) -> bytes:
        """POST `body`; the answer's body. Retried with backoff while the server cannot be
        reached or answers that its store cannot; perdure errors are raised as themselves."""
        delay, said = 0.05, 0.0
        while True:
            try:
                response = await self._client().post(path, content=body, headers=self._headers)
            except self._httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                clock = response.headers.get(CLOCK_HEADER)
                if clock is not None:
                    self._offset = float(clock) - time.time()
                if response.status_code < 400:
                    content: bytes = response.content
                    return content
                if response.status_code not in (502, 503, 504):
                    raise errors.from_answer(response.content, response.status_code)
                failure = f"HTTP {response.status_code}"
            if time.monotonic() - said > 10.0:
                log.warning(
                    "the perdure server at %s cannot be reached (%s); retrying", self.url, failure
                )
                said = time.monotonic()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run the store operation `op` on the server's store. Calls made at once (the runs of
        a worker, each at its own step) go in one request: as group commit does for the
        database's fsyncs, a batch shares the cost of a round trip."""
        loop = asyncio.get_running_loop()
        batch = self._batches.setdefault(id(loop), [])
        answer: asyncio.Future[bytes] = loop.create_future()
        batch.append((op, encode_call(op, args, kwargs), answer))
        if len(batch) == 1:
            loop.call_soon(self._send_batch, loop)
        return decode_result(op, await answer)

    def _send_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches.pop(id(loop), [])
        for start in range(0, len(batch), BATCH_LIMIT):
            task = loop.create_task(self._send(batch[start : start + BATCH_LIMIT]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[tuple[str, bytes, asyncio.Future[bytes]]]) -> None:
        body = msgspec.msgpack.encode([(op, data) for op, data, _answer in calls])
        try:
            answers = msgspec.msgpack.decode(
                await self._post("/api/v1/worker/batch", body), type=list[Answer]
            )
        except Exception as exc:  # the callers hear of it
            for _op, _data, answer in calls:
                if not answer.done():
                    answer.set_exception(exc)
            return
        except BaseException:  # cancelled (the store closes): so are the calls
            for _op, _data, answer in calls:
                answer.cancel()
            raise
        for (_op, _data, future), got in zip(calls, answers, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if got.error is not None:
                future.set_exception(errors.from_name(got.error, got.message or ""))
            else:
                future.set_result(got.data or b"")

    # -- the worker's session: the server reaps it when the connection closes ------------

    async def register_worker(self, worker: WorkerRecord) -> None:
        await self.call("register_worker", worker)
        if self._session is None:
            self._session = asyncio.get_running_loop().create_task(self._hold(worker.id))

    async def deregister_worker(self, worker_id: str) -> None:
        await self.call("deregister_worker", worker_id)
        if self._session is not None:
            self._session.cancel()
            self._session = None

    async def _hold(self, worker_id: str) -> None:
        """Keep the session open (again, after a drop: the heartbeats say whether the
        server reaped this worker meanwhile)."""
        path = f"/api/v1/worker/session/{worker_id}"
        while True:
            try:
                async with self._client().stream("POST", path, headers=self._headers) as answer:
                    if answer.status_code >= 400:
                        raise errors.from_answer(await answer.aread(), answer.status_code)
                    async for _tick in answer.aiter_bytes():
                        pass
            except (self._httpx.TransportError, errors.PerdureError) as exc:
                log.warning("session with the server %s dropped (%s); reopening", self.url, exc)
            await asyncio.sleep(1.0)

    # -- what stays here ---------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self._offset

    async def open(self) -> None:
        await self.call("get_runs", [])  # reach the server once: its clock, the key's scope

    async def detach(self) -> None:
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()

    async def close(self) -> None:
        for task in (self._poller, self._session):
            if task is not None:
                task.cancel()
        self._poller = self._session = None
        await self.detach()

    async def offload(self, value: Value | None) -> Value | None:
        """A value over the inline limit goes to the server's blob store now (in the step's
        attempt): put by this worker into the object store itself when the server hands out
        presigned URLs (see upload), else through the server. A smaller one travels with its
        record, no call needed. What comes back is the reference alone (no bytes: its record
        needs no more, so the value does not travel again)."""
        if stays_inline(value, self.inline_limit):
            return value
        assert value is not None
        offloaded: Value | None = await self._upload(value) or await self.call("offload", value)
        assert offloaded is not None
        assert offloaded.blob_key is not None
        return dataclasses.replace(offloaded, data=b"")

    async def _upload(self, value: Value) -> Value | None:
        """Put `value`'s bytes into the server's object store by a presigned URL; None when
        the server cannot hand one out (its blobs are in a folder), this worker cannot encrypt
        as the server does, or the upload failed (then the server puts it)."""
        key = await asyncio.to_thread(content_key, value.data)
        body = await self._post("/api/v1/worker/upload", msgspec.msgpack.encode(key))
        ticket = msgspec.msgpack.decode(body, type=UploadTicket | None)
        if ticket is None:
            return None
        size = len(value.data)
        if ticket.stored_size is not None:  # content-addressed: there already
            return Value(
                codec=value.codec,
                data=b"",
                blob_key=key,
                raw_size=size,
                stored_size=ticket.stored_size,
            )
        keyring = self.keyring if ticket.key_id is not None else None
        if ticket.url is None or (
            ticket.key_id is not None and (keyring is None or keyring.current_id != ticket.key_id)
        ):
            self._say_once(
                "this worker's PERDURE_ENCRYPTION_KEY is not the server's current key: large "
                "values go through the server"
            )
            return None
        packed = await asyncio.to_thread(pack, value.data, ticket.level, keyring)
        try:
            answer = await self._client().put(ticket.url, content=packed)
            answer.raise_for_status()
        except self._httpx.HTTPError as exc:
            self._say_once(
                f"cannot put values into the object store directly ({exc}): large "
                "values go through the server"
            )
            return None
        log.debug("put blob %s (%d bytes) into the object store directly", key, len(packed))
        return Value(
            codec=value.codec, data=b"", blob_key=key, raw_size=size, stored_size=len(packed)
        )

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning(message, extra={"action": "upload_fallback"})

    async def advance_clock(self, seconds: float) -> None:
        raise errors.ConfigurationError("a remote store's clock is its server's: it cannot travel")

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        raise errors.ConfigurationError("migrate the server's database where the server runs")

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        return []  # (session_liveness is False: never asked)

    # -- change notification: a long poll ----------------------------------------------------

    def change_token(self) -> ChangeToken:
        return self._notifier.token()

    def changed_since(self, since: ChangeToken, topics: Collection[str] | None = None) -> bool:
        self._watch(topics)
        return self._notifier.changed(since, None if topics is None else frozenset(topics))

    async def wait_for_change(
        self,
        timeout: float,
        *,
        topics: Collection[str] | None = None,
        since: ChangeToken | None = None,
        wake: asyncio.Future[None] | None = None,
    ) -> bool:
        wanted = None if topics is None else frozenset(topics)
        start = self._notifier.token() if since is None else since
        self._watch(topics)
        return await self._notifier.wait(start, wanted, timeout, wake)

    def _watch(self, topics: Collection[str] | None) -> None:
        """Make sure the long poll asks about `topics` from now on."""
        for topic in [None] if topics is None else topics:
            if topic not in self._interest:
                self._interest.add(topic)
                self._repoll.set()
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        since: int | None = None
        while True:
            self._repoll.clear()
            topics = None if None in self._interest else sorted(t for t in self._interest if t)
            poll = msgspec.msgpack.encode(ChangePoll(since=since, topics=topics))
            asking = asyncio.ensure_future(self._post("/api/v1/worker/changes", poll))
            again = asyncio.ensure_future(self._repoll.wait())
            done, _ = await asyncio.wait({asking, again}, return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
            if asking not in done:  # new topics: ask again, with them
                asking.cancel()
                continue
            try:
                changes = msgspec.msgpack.decode(asking.result(), type=Changes)
            except errors.PerdureError as exc:
                log.warning("change poll refused: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if since is None:
                # listening from now on: what changed before is unknown here, so anything may
                # have (a spurious wake-up makes the waiters read again; a missed one would
                # leave runs unclaimed until a timeout)
                self._notifier.notify(None)
            elif changes.changed is None or changes.changed:
                self._notifier.notify(changes.changed)
            since = changes.token


def _operation(op: str) -> Callable[..., Any]:
    async def operation(self: RemoteStore, *args: Any, **kwargs: Any) -> Any:
        return await self.call(op, *args, **kwargs)

    operation.__name__ = op
    operation.__doc__ = getattr(Store, op).__doc__
    return operation


for _op in WORKER_OPERATIONS - set(vars(RemoteStore)):
    setattr(RemoteStore, _op, _operation(_op))


def open_remote(
    url: str,
    *,
    api_key: str,
    blobs: BlobStore,
    inline_limit: int,
    keyring: Keyring | None = None,
) -> Store:
    """The store of a hybrid worker: the server at `url`, with a key of scope `worker`."""
    store = RemoteStore(
        url, api_key=api_key, blobs=blobs, inline_limit=inline_limit, keyring=keyring
    )
    return typing.cast(Store, store)
