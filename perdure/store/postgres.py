"""The production store's connector: PostgreSQL through psycopg 3 (async) and psycopg_pool.

Tables live in the schema `perdure`. Claims use `FOR UPDATE SKIP LOCKED`, so many workers never
wait on each other. Every write announces what it changed with `pg_notify('perdure', topic)` in
its own transaction; one LISTEN connection per process turns those into wake-ups, so a trigger
made anywhere reaches an idle worker without polling. A write runs in pipeline mode: each step
of its operation (a query, or a batch of them) is one round trip, the BEGIN rides with the
first and the COMMIT is the last. Connections, retries, LISTEN and the workers' session locks
are in pg_connections.py; the fast paths of the hottest writes in pg_fast.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from perdure.blobs.base import BlobStore
from perdure.crypto import Keyring
from perdure.errors import ConfigurationError, SchemaOutdated
from perdure.store.connector import (
    Batch,
    Last,
    Operation,
    OperationFactory,
    Query,
    Result,
    Row,
    T,
    rows_of,
)
from perdure.store.notify import ChangeNotifier
from perdure.store.pg_connections import (
    LOCK_CLASS,
    SCHEMA,
    Conn,
    Deferred,
    Pipeline,
    PostgresConnections,
    session_key,
    translate,
)
from perdure.store.pg_fast import PostgresFastPaths
from perdure.store.queries import load_migrations, load_queries, pending_migrations
from perdure.store.redis_tier import RedisTier
from perdure.store.sql import SQLStore
from perdure.values import DEFAULT_INLINE_LIMIT

log = logging.getLogger("perdure.store")

SQL = load_queries("postgres")
MIGRATIONS = load_migrations("postgres")
SCHEMA_VERSION = MIGRATIONS[-1][0]
_MIGRATION_LOCK = 7_366_101  # pg_advisory_xact_lock key: one migrator at a time
SESSION_GRACE = 10.0  # seconds after a server start during which missing locks prove nothing
_CLOCK_READ_QUICK = 0.05  # seconds: a clock reading answered within this sets the offset


async def _rows(query: Query, cur: psycopg.AsyncCursor[Any]) -> list[Any]:
    """The rows `cur` returned for `query` (none for a write without RETURNING), or what the
    query's `each` made of them as they were read."""
    result = cur.pgresult
    # (not `cur.description is None`: that builds a Column for each of the row's ~45 columns,
    # every time: a third of a claim's CPU time here)
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return []
    each = query.each
    if each is None:
        return await cur.fetchall()
    return [each(row) async for row in cur]


class PostgresConnector(PostgresConnections):
    """`Connector` on PostgreSQL."""

    session_liveness = True
    """Capability: a worker holds an advisory lock in a session of its own while it lives, so
    its death (its connection closed by the kernel) is visible to every other worker at once."""

    def __init__(
        self,
        url: str,
        *,
        auto_migrate: bool = True,
        pool_size: int = 10,
        retry_for: float = 300.0,
        fast_paths: bool = True,
        redis: RedisTier | None = None,
    ) -> None:
        self.url = url
        self.redis = redis
        self.auto_migrate = auto_migrate
        self.pool_size = pool_size
        self.retry_for = retry_for
        self.notifier = ChangeNotifier()
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Conn]] = {}
        self._listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._checks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._session_locks: dict[str, psycopg.Connection[Any]] = {}
        self._opened = False
        self._clock_offset = 0.0
        """The server's clock minus this process's (see now())."""
        self.where = self._redacted()
        self.fast = PostgresFastPaths(self) if fast_paths else None
        """The fast paths of the hottest writes (off: every write takes the shared operation,
        as the contract suite checks)."""

    # -- running operations ------------------------------------------------------------------

    @staticmethod
    async def _results(
        queries: Sequence[Query], cursors: list[psycopg.AsyncCursor[Any]]
    ) -> list[Result]:
        return [
            Result(await _rows(query, cur), cur.rowcount)
            for query, cur in zip(queries, cursors, strict=True)
        ]

    async def _drive(
        self, conn: Conn, pipeline: Pipeline | None, make: OperationFactory[T]
    ) -> T | Deferred[T]:
        """Run the operation on `conn`; each step's queries are sent together (in `pipeline`,
        or in one of their own) and synced once; in a transaction's pipeline, the Last ones
        are left for the COMMIT to carry (their results then come with a Deferred)."""
        operation = make()
        try:
            step = next(operation)
            while True:
                queries = step if isinstance(step, Batch) else (step,)
                if not queries:  # an empty batch: nothing to send
                    step = operation.send([])
                    continue
                if pipeline is not None:
                    cursors = [await conn.execute(SQL[q.name], q.params) for q in queries]
                    if isinstance(step, Last):
                        return Deferred(functools.partial(self._last, operation, queries, cursors))
                    await pipeline.sync()
                elif len(queries) == 1:
                    cursors = [await conn.execute(SQL[queries[0].name], queries[0].params)]
                else:
                    async with conn.pipeline() as batch:
                        cursors = [await conn.execute(SQL[q.name], q.params) for q in queries]
                        await batch.sync()
                results = await self._results(queries, cursors)
                step = operation.send(results if isinstance(step, Batch) else results[0])
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _last(
        self,
        operation: Operation[T],
        queries: Sequence[Query],
        cursors: list[psycopg.AsyncCursor[Any]],
    ) -> T:
        """The answer of `operation` from the results of its Last queries."""
        try:
            operation.send(await self._results(queries, cursors))
        except StopIteration as stop:
            result: T = stop.value
            return result
        raise RuntimeError("a store operation went on after its Last queries")

    async def read(self, make: OperationFactory[T], what: str) -> T:
        async def attempt() -> T:
            async with self._connection(what) as conn:
                result = await self._drive(conn, None, make)
                assert not isinstance(result, Deferred)  # (no pipeline: every step is synced)
                return result

        return await self._retrying(what, attempt)

    async def write(
        self,
        make: OperationFactory[T],
        what: str,
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> T:
        async def work(conn: Conn, pipeline: Pipeline) -> T | Deferred[T]:
            return await self._drive(conn, pipeline, make)

        return await self._write(what, work, topics, durable=durable, give_up_after=give_up_after)

    async def watch(self) -> None:
        if not self._opened:
            await self.open()
        self._ensure_listener()

    # -- lifecycle and schema ----------------------------------------------------------------

    async def _version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present", (f"{SCHEMA}.schema_version",)
        )
        row = await cur.fetchone()
        if not row or not row["present"]:
            return 0
        cur = await conn.execute(f"SELECT max(version) AS v FROM {SCHEMA}.schema_version")
        row = await cur.fetchone()
        return int(row["v"] or 0) if row else 0

    def _pending(self, version: int, target: int | None = None) -> list[tuple[int, str, str]]:
        return pending_migrations(MIGRATIONS, version, target, self.where)

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, row_factory=dict_row)
        except psycopg.Error as exc:
            raise translate(exc, "connect", first_connect=not self._opened) from exc
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                pending = self._pending(await self._version(conn), target)
                if dry_run:
                    return [name for _v, name, _sql in pending]
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                await conn.execute(f"SET LOCAL search_path = {SCHEMA}")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for version, name, sql in pending:
                    await conn.execute(sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                return [name for _v, name, _sql in pending]
        finally:
            await conn.close()

    async def open(self) -> None:
        if self._opened:
            return
        pending = await self.migrate(dry_run=True)
        if pending and not self.auto_migrate:
            raise SchemaOutdated(
                f"database {self.where} needs migrations {', '.join(pending)}; "
                "run `perdure migrate`"
            )
        if pending:
            applied = await self.migrate(dry_run=False)
            if applied:
                log.info("migrated %s: %s", self.where, ", ".join(applied))
        self._opened = True
        await self._read_clock()

    async def close(self) -> None:
        for worker_id in list(self._session_locks):
            await asyncio.to_thread(self._unlock_session, worker_id)
        await self.detach()
        self._pools.clear()  # other loops' pools end with their loops
        self._listeners.clear()
        self._checks.clear()
        self._opened = False

    async def vacuum(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise translate(exc, "reclaim") from exc
        try:
            await conn.execute(f"VACUUM {SCHEMA}.runs, {SCHEMA}.journal, {SCHEMA}.attempts")
        except psycopg.Error as exc:
            raise translate(exc, "reclaim") from exc
        finally:
            await conn.close()

    # -- the server's clock ------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        raise ConfigurationError(
            "time travel needs the SQLite store: PostgreSQL's clock is the server's, shared by "
            "every process (perdure.testing.harness makes a SQLite store of its own)"
        )

    def observe_clock(self, sent: float, server_now: float) -> None:
        """A reading of the server's clock, taken between `sent` and now on this process's
        clock: the offset lies between server_now - now and server_now - sent. A quick reading
        sets it to the middle; a slow one only when the current estimate lies outside (the
        clocks jumped), since the event loop may have held the answer back."""
        received = time.time()
        low, high = server_now - received, server_now - sent
        if received - sent <= _CLOCK_READ_QUICK or not low <= self._clock_offset <= high:
            self._clock_offset = (low + high) / 2

    async def _server_row(self, query: str, params: dict[str, Any]) -> Row:
        """The one row of a query that reads the server's clock (server_now), observed."""
        sent = time.time()
        (row,) = await self.read(lambda: rows_of(Query(query, params)), query)
        self.observe_clock(sent, row["server_now"])
        return row

    async def _read_clock(self) -> None:
        # twice: the first reading also opens this loop's first connection, so it is slow and
        # sets the offset only if the clocks are far apart; the second is quick
        for _ in range(2):
            await self._server_row("clock", {})

    # -- worker sessions ---------------------------------------------------------------------

    async def hold_session(self, worker_id: str) -> None:
        await asyncio.to_thread(self._lock_session, worker_id)

    async def release_session(self, worker_id: str) -> None:
        await asyncio.to_thread(self._unlock_session, worker_id)

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        row = await self._server_row("session_locks", {"lock_class": LOCK_CLASS})
        held = set(row["held"])
        if session_key(me) not in held:
            # our own session is gone (the server restarted, or the network dropped): take the
            # lock again, and judge no one until we hold it
            if me in self._session_locks:
                await asyncio.to_thread(self._lock_session, me)
            return []
        if row["uptime"] < SESSION_GRACE:
            return []  # the server restarted: give every worker time to lock again
        return [w for w in worker_ids if session_key(w) not in held]


class PostgresStore(SQLStore):
    """The store on PostgreSQL."""

    db: PostgresConnector

    def __init__(
        self,
        url: str,
        *,
        blobs: BlobStore,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        auto_migrate: bool = True,
        pool_size: int = 10,
        retry_for: float = 300.0,
        keyring: Keyring | None = None,
        fast_paths: bool = True,
        redis: RedisTier | None = None,
    ) -> None:
        connector = PostgresConnector(
            url,
            auto_migrate=auto_migrate,
            pool_size=pool_size,
            retry_for=retry_for,
            fast_paths=fast_paths,
            redis=redis,
        )
        super().__init__(connector, blobs=blobs, inline_limit=inline_limit, keyring=keyring)
