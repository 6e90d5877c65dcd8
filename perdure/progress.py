"""What a run shows the world while it runs: `perdure.metadata` (a small mapping, set from the
run's code, read at once by anyone through `handle.metadata()`) and `perdure.stream` (chunks
appended in order, e.g. an LLM's tokens, kept with the run so a late or reconnecting subscriber
of `handle.stream(name)` reads them from the start).

Neither takes a journal position. A body that runs again (a resume, a crash) sets its metadata
again (the same values, so nothing changes), and its chunks are not added twice: each is keyed by
where in the run's code it was made (see RunData.origin), so a replay's chunk is the one already
kept. A step body that runs again (a retry) makes new chunks: its attempt is part of the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from perdure import context as run_context  # (it holds a RunData: imported both ways)
from perdure import serde, values
from perdure.errors import LeaseLost, PayloadTooLarge, PerdureError, StoreError
from perdure.records import Value

if TYPE_CHECKING:
    from perdure.context import RunContext

log = logging.getLogger("perdure.run")
own_log = logging.getLogger("perdure.run_logs")
"""What goes wrong keeping log lines (never itself kept as one)."""

MAX_METADATA = 64 * 1024
"""Bytes a run's metadata may take, encoded."""
MAX_CHUNK = 64 * 1024
"""Bytes a stream chunk may take, encoded."""
MAX_CHUNKS = 10_000
"""Chunks a run may keep, over all its streams (its log lines included)."""
LOGS = "perdure.logs"
"""The stream that holds the run's log lines (see perdure.run_logs); a name of perdure's own:
names that start with "perdure." are not for streams of the run's code."""
LOG_BATCH = 500
"""Log lines in one write at most."""


def encode(value: Any, what: str, max_size: int) -> Value:
    """`value` as metadata and chunks are kept (msgpack, the secret check, a size bound)."""
    data = values.encode(value, codec=serde.Codec.MSGPACK, what=what, max_size=max_size)
    return Value(codec=str(serde.Codec.MSGPACK), data=data, raw_size=len(data))


def decoded(value: Value | None, what: str) -> Any:
    """The value kept in `value` (None: nothing kept)."""
    if value is None:
        return None
    return serde.decode(value.data, codec=serde.Codec(value.codec), what=what)


class RunData:
    """One execution's metadata and streams: changes are written in order, one write in flight
    at a time (a burst of changes becomes one write of the latest mapping)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        known = decoded(ctx.run.metadata, f"metadata of run {ctx.run.id}")
        self.metadata: dict[str, Any] = dict(known) if isinstance(known, Mapping) else {}
        self._dirty = False
        self._writing: asyncio.Task[None] | None = None
        self._streaming = asyncio.Lock()
        """Held by each append (a chunk, a batch of lines): each takes the run's next positions,
        and two at once would take the same."""
        self._made: dict[tuple[Any, ...], int] = {}
        """Chunks (and, apart, log lines) made so far at each place (see origin)."""
        self._lines: list[tuple[dict[str, Any], str]] = []
        """Log lines not written yet, with their origins."""
        self._logging: asyncio.Task[None] | None = None
        self._logs_full = False
        self._silent = ctx.journal.check_only
        """A replay check: nothing is written."""

    def set(self, key: str, value: Any) -> None:
        changed = {**self.metadata, key: value}
        encode(changed, f"metadata of run {self.ctx.run.id}", MAX_METADATA)  # refused here
        self.metadata = changed
        if self._silent:
            return
        self._dirty = True
        if _on_loop(self.ctx):
            self._kick()
        else:  # a sync task's thread
            self.ctx.loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._writing is None or self._writing.done():
            self._writing = self.ctx.loop.create_task(self._write())

    async def _write(self) -> None:
        while self._dirty:
            self._dirty = False
            value = encode(self.metadata, f"metadata of run {self.ctx.run.id}", MAX_METADATA)
            try:
                await self.ctx.store.set_metadata(self.ctx.run.id, self.ctx.run.held, value)
            except (LeaseLost, StoreError) as exc:  # the run's own end says what happened
                log.warning("metadata of run %s not written: %s", self.ctx.run.id, exc)
                return

    async def flush(self) -> None:
        """Wait for the metadata and log writes in flight (before the run's end is written)."""
        while self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)
        while self._logging is not None and not self._logging.done():
            await asyncio.shield(self._logging)

    def origin(self, kind: str = "") -> str:
        """Where in the run's code the next chunk (or, of `kind` "log", log line) is made, the
        same on a replay: the task attempt, the journal position (the step whose body makes
        it, or the last position the body took), the step's attempt, and the count of chunks
        (log lines) made there so far. Lines are counted apart from chunks: a line logged on
        one execution and not the next moves no chunk's origin."""
        step = run_context._in_step.get()
        place = (step.seq, step.attempt) if step is not None else (self.ctx.journal.seq, 0)
        count = self._made.get((kind, *place), 0) + 1
        self._made[(kind, *place)] = count
        return f"{kind}{self.ctx.run.attempt}.{place[0]}.{place[1]}.{count}"

    def log(self, entry: dict[str, Any]) -> None:
        """Keep a log line of the run (from any thread; see perdure.run_logs)."""
        if self._logs_full or self._silent:
            return
        item = (entry, self.origin("log"))
        if _on_loop(self.ctx):
            self._queue_line(item)
        else:  # a step's thread
            self.ctx.loop.call_soon_threadsafe(self._queue_line, item)

    def _queue_line(self, item: tuple[dict[str, Any], str]) -> None:
        self._lines.append(item)
        if self._logging is None or self._logging.done():
            self._logging = self.ctx.loop.create_task(self._write_lines())

    async def _write_lines(self) -> None:
        while self._lines and not self._logs_full:
            batch, self._lines = self._lines[:LOG_BATCH], self._lines[LOG_BATCH:]
            chunks = [(encode(entry, "a log line", MAX_CHUNK), origin) for entry, origin in batch]
            run = self.ctx.run
            try:
                async with self._streaming:  # (chunks and lines take the run's positions in turn)
                    positions = await self.ctx.store.append_stream(
                        run.id, run.held, LOGS, chunks, max_chunks=MAX_CHUNKS
                    )
            except (LeaseLost, StoreError, PerdureError) as exc:
                own_log.warning("log lines of run %s not kept: %s", run.id, exc)
                self._lines.clear()
                return
            if None in positions:
                self._logs_full = True
                own_log.warning(
                    "run %s holds %s stream chunks and log lines: its further lines are not kept",
                    run.id,
                    f"{MAX_CHUNKS:,}",
                )

    async def append(self, name: str, chunk: Any, origin: str) -> int:
        value = encode(chunk, f"chunk of stream {name!r}", MAX_CHUNK)
        if self._silent:
            return 0
        async with self._streaming:  # in order: each chunk takes the next position
            run = self.ctx.run
            (position,) = await self.ctx.store.append_stream(
                run.id, run.held, name, [(value, origin)], max_chunks=MAX_CHUNKS
            )
        if position is None:
            raise PayloadTooLarge(
                f"run {run.id} holds {MAX_CHUNKS:,} stream chunks already, the most a run may "
                "keep: send fewer, larger chunks (or a reference to data kept elsewhere)"
            )
        return position


def _on_loop(ctx: RunContext) -> bool:
    try:
        return asyncio.get_running_loop() is ctx.loop
    except RuntimeError:
        return False


def _data() -> RunData:
    ctx = run_context.current()
    if ctx is None:
        raise PerdureError(
            "perdure.metadata and perdure.stream are only available inside a run (its task's "
            "body or its steps)"
        )
    return ctx.data


class _Metadata:
    """`perdure.metadata`: the running run's metadata."""

    def set(self, key: str, value: Any) -> None:
        """Set `key` (visible at once through handle.metadata(), kept across resumes)."""
        if not isinstance(key, str) or not key:
            raise PerdureError(f"a metadata key is a non-empty string, got {key!r}")
        _data().set(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` (as this run set it), or `default`."""
        return _data().metadata.get(key, default)

    def current(self) -> dict[str, Any]:
        """A copy of the whole mapping."""
        return dict(_data().metadata)


metadata = _Metadata()


def stream(name: str, chunk: Any) -> Any:
    """Append `chunk` to the run's stream `name`: `await perdure.stream("answer", token)` (in a
    sync task, without await). Subscribers (`handle.stream(name)`) get every chunk in order, from
    the start. Each chunk at most 64 KiB encoded; at most 10,000 chunks per run."""
    if not isinstance(name, str) or not name:
        raise PerdureError(f"a stream's name is a non-empty string, got {name!r}")
    if name.startswith("perdure."):
        raise PerdureError(f"stream names that start with 'perdure.' are perdure's: {name!r}")
    data = _data()
    coro = data.append(name, chunk, data.origin())  # (its place is taken at call time)
    if _on_loop(data.ctx):
        return coro
    return asyncio.run_coroutine_threadsafe(coro, data.ctx.loop).result()
