"""PostgreSQL connections for the store: one pool per event loop (psycopg's async pools belong
to one loop: the worker's, the heartbeat thread's, a `trigger_sync` caller's), retries while the
server is unreachable, the LISTEN connection that turns NOTIFYs into wake-ups, and the workers'
session locks (an advisory lock held on a blocking connection of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from perdure.errors import ConfigurationError, StoreRefused, StoreUnavailable
from perdure.store.notify import ChangeNotifier
from perdure.store.redis_tier import RedisTier

log = logging.getLogger("perdure.store")

SCHEMA = "perdure"
CHANNEL = "perdure"
LOCK_CLASS = 7_366_102  # first key of the workers' session locks
T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]
Pipeline = psycopg.AsyncPipeline


def session_key(worker_id: str) -> int:
    """Second key of a worker's session lock (a positive int4)."""
    return zlib.crc32(worker_id.encode()) & 0x7FFFFFFF


_PERMANENT = (
    "does not exist",  # FATAL: database "x" / role "x" does not exist
    "password authentication failed",
    "no pg_hba.conf entry",
    "failed to resolve host",
    "could not translate host name",
    "invalid sslmode",
    "invalid port",
    "invalid integer value",
    "invalid connection option",
    "invalid dsn",
    "but ssl was required",
    "certificate",
)
"""What a connection error says when trying again cannot help: a wrong URL, user, password,
database, host name or TLS setting (the server being down or restarting can)."""


def translate(exc: psycopg.Error, what: str, *, first_connect: bool = False) -> Exception:
    """Driver errors at the boundary: the cause is kept on __cause__. On a store's first
    connection, an error that retrying cannot fix is a ConfigurationError (said at once);
    once a store has connected, every connection error is taken as passing."""
    if first_connect and isinstance(exc, psycopg.OperationalError):
        reason = " ".join(str(exc).split())
        if any(marker in reason.lower() for marker in _PERMANENT):
            return ConfigurationError(
                f"cannot connect to PostgreSQL: {reason}; check the database URL "
                "(PERDURE_DATABASE_URL or App(database=...))"
            )
    if isinstance(exc, psycopg.DataError | psycopg.errors.ProgramLimitExceeded):
        return StoreRefused(f"PostgreSQL refused {what}: {exc}")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return StoreUnavailable(f"PostgreSQL unavailable during {what}: {exc}")
    return exc


class Deferred(Generic[T]):
    """A write's answer that waits on results sent with its COMMIT (see connector.Last)."""

    def __init__(self, answer: Callable[[], Awaitable[T]]) -> None:
        self.answer = answer


async def _check(pool: AsyncConnectionPool[Conn]) -> None:
    with contextlib.suppress(Exception):  # (a pool closing meanwhile: nothing to check)
        await pool.check()


class PostgresConnections:
    """Connections, retries, LISTEN and session locks; the store's queries live above it."""

    url: str
    pool_size: int
    retry_for: float
    notifier: ChangeNotifier
    redis: RedisTier | None
    _opened: bool
    _pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Conn]]
    _listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]]
    _checks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]]
    _session_locks: dict[str, psycopg.Connection[Any]]

    async def open(self) -> None:
        """Check the schema; implemented by the store."""
        raise NotImplementedError

    def _kwargs(self) -> dict[str, Any]:
        # autocommit: a read is one round trip; writes open their transaction explicitly
        return {
            "row_factory": dict_row,
            "autocommit": True,
            # every statement is one of a few, run over and over: prepare it on first use
            # (psycopg's default waits for five runs on each pooled connection)
            "prepare_threshold": 0,
            "options": f"-c search_path={SCHEMA}",
        }

    async def _pool(self) -> AsyncConnectionPool[Conn]:
        if not self._opened:
            await self.open()
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            for other in [lp for lp in self._pools if lp.is_closed()]:
                del self._pools[other]  # its connections went with their loop
            home = not self._pools
            pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self.pool_size if home else 2,
                timeout=5.0,  # a checkout waits this long, then the retry loop says why
                kwargs=self._kwargs(),
                open=False,
                name=f"perdure-{len(self._pools)}",
                connection_class=psycopg.AsyncConnection[dict[str, Any]],
            )
            self._pools[loop] = pool
            try:
                await pool.open(wait=True, timeout=30)
            except psycopg.Error as exc:
                del self._pools[loop]
                raise translate(exc, "connect") from exc
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Conn]:
        pool = await self._pool()
        try:
            async with pool.connection() as conn:
                try:
                    yield conn
                finally:
                    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
                        # a write cancelled while its pipeline synced (a run cancelled in the
                        # middle of a trigger) leaves it in pipeline mode, and the pool checks
                        # only the transaction: the next read's query would only be queued and
                        # read no rows. Closed, the pool replaces it. (Not the pool's `reset`:
                        # with one, every connection goes back through a task of the pool.)
                        await conn.close()
        except psycopg.Error as exc:
            translated = translate(exc, what)
            if translated is exc:
                raise
            if isinstance(exc, psycopg.OperationalError):
                self._check_idle(pool)
            raise translated from exc
        except UnicodeError as exc:  # a str PostgreSQL cannot hold (a lone surrogate)
            raise StoreRefused(f"PostgreSQL refused {what}: {exc}") from exc

    def _check_idle(self, pool: AsyncConnectionPool[Conn]) -> None:
        """A connection failed: test the pool's idle connections now, in the background, and
        replace the broken ones. A server restart cuts every one of them, and each would
        otherwise be found broken by a retry of its own, a backoff apart (recovering from a
        restart took a pool's worth of retries)."""
        loop = asyncio.get_running_loop()
        running = self._checks.get(loop)
        if running is None or running.done():
            self._checks[loop] = loop.create_task(_check(pool), name="perdure-pool-check")

    async def _retrying(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        give_up_after: float | None = None,
    ) -> T:
        """Run `attempt`; while the server is unreachable, retry with backoff and say so, for
        up to `retry_for` seconds (or `give_up_after`, when shorter). Every write is safe to
        repeat: an answer lost with the connection is found again (same journal entry, same
        run id, a claim released later)."""
        patience = self.retry_for if give_up_after is None else min(self.retry_for, give_up_after)
        delay, deadline = 0.1, time.monotonic() + patience
        while True:
            try:
                return await attempt()
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "%s: %s; retrying in %.1fs", what, exc, delay, extra={"action": "store_retry"}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(
        self,
        what: str,
        work: Callable[[Conn, Pipeline], Awaitable[T | Deferred[T]]],
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> T:
        """`work` in one transaction, in pipeline mode: what it sends goes to the server when
        it syncs the pipeline (the transaction's BEGIN with its first queries, the topics'
        NOTIFY with its COMMIT). When `work` defers its last queries' results, they are read
        after the COMMIT is queued: the last queries and the COMMIT take one round trip."""

        async def attempt() -> T:
            async with self._connection(what) as conn, conn.pipeline() as pipeline:
                async with conn.transaction():
                    if not durable:  # a commit that need not wait for its WAL flush
                        await conn.execute("SET LOCAL synchronous_commit TO off")
                    result = await work(conn, pipeline)
                    if topics and not self._redis_up():  # at commit, to every listening process
                        await conn.execute(
                            "SELECT pg_notify(%s, t) FROM unnest(%s::text[]) AS t",
                            (CHANNEL, list(topics)),
                        )
                if isinstance(result, Deferred):  # (a failed query fails the commit, and this)
                    return await result.answer()
                return result

        result = await self._retrying(what, attempt, give_up_after=give_up_after)
        if topics:
            self.announce(topics)
        return result

    def _redis_up(self) -> bool:
        return self.redis is not None and self.redis.up

    def announce(self, topics: Collection[str]) -> None:
        """Committed changes of `topics`: wake this process's waiters now (they need not wait
        for the echo) and, with the Redis tier, every other process's."""
        self.notifier.notify(set(topics))
        if self.redis is not None:
            self.redis.announce(topics)

    def _redacted(self) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    async def detach(self) -> None:
        loop = asyncio.get_running_loop()
        for task in (self._listeners.pop(loop, None), self._checks.pop(loop, None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.close()
        if self.redis is not None:
            await self.redis.detach()

    def _ensure_listener(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None or listener.done():
            self._listeners[loop] = loop.create_task(self._listen(), name="perdure-listen")

    async def _listen(self) -> None:
        """Turn the Redis tier's messages into wake-ups; while Redis is unreachable, listen
        to NOTIFYs instead (the writes of processes that cannot reach Redis either come as
        NOTIFYs; the others' are found by the waiters' timeouts)."""
        if self.redis is None:
            await self._listen_pg()
            return
        while True:
            await self.redis.listen(self.notifier.notify)  # returns when the connection is lost
            fallback = asyncio.get_running_loop().create_task(self._listen_pg())
            try:
                await self.redis.reachable()
            finally:
                fallback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fallback

    async def _listen_pg(self) -> None:
        """Turn NOTIFYs into wake-ups; reconnect with backoff when the connection drops."""
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.notifier.notify(None)  # we may have missed changes while away
                    delay = 0.1
                    async for note in conn.notifies():
                        self.notifier.notify({note.payload})
                finally:
                    await conn.close()
            except psycopg.Error as exc:
                log.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1fs",
                    exc,
                    delay,
                    extra={"action": "listen_retry"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _lock_session(self, worker_id: str) -> None:
        """Hold `worker_id`'s advisory lock on a blocking connection of its own: it does not
        depend on any event loop, and the server drops it the moment the process dies."""
        old = self._session_locks.pop(worker_id, None)
        if old is not None:
            old.close()
        try:
            conn = psycopg.connect(self.url, autocommit=True)
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, session_key(worker_id))
            ).fetchone()
        except psycopg.Error as exc:
            raise translate(exc, "session lock") from exc
        if not row or not row[0]:  # a key collision: this worker falls back on heartbeats
            conn.close()
            log.warning(
                "worker %s: session lock taken; its death will be seen by heartbeat only",
                worker_id,
            )
            return
        self._session_locks[worker_id] = conn

    def _unlock_session(self, worker_id: str) -> None:
        conn = self._session_locks.pop(worker_id, None)
        if conn is not None:
            conn.close()
