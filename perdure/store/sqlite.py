"""The embedded store's connector: one SQLite file in WAL mode with synchronous=FULL.

Writes go through one group-commit writer thread per process (see group_commit.py). Reads
never wait for writers (WAL); a quick one runs on the calling loop, on a connection of its
thread, while reads take under QUICK_READ on average, else on two reader threads, so a loop
never waits long on the disk. Other processes on the same file are noticed through
`PRAGMA data_version`, polled every `poll_interval` seconds by the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from perdure.blobs.base import BlobStore
from perdure.crypto import Keyring
from perdure.errors import SchemaOutdated, StoreUnavailable
from perdure.store.connector import Batch, Operation, OperationFactory, Query, Result, T
from perdure.store.group_commit import GroupCommitWriter, Timing
from perdure.store.notify import ChangeNotifier
from perdure.store.queries import load_migrations, load_queries, pending_migrations
from perdure.store.sql import SQLStore
from perdure.values import DEFAULT_INLINE_LIMIT

log = logging.getLogger("perdure.store")

SQL = load_queries("sqlite")
MIGRATIONS = load_migrations("sqlite")
SCHEMA_VERSION = MIGRATIONS[-1][0]
_TAKES_LISTS = frozenset(name for name, sql in SQL.items() if "json_each" in sql)
"""The queries that take lists (read with json_each): their lists are passed as JSON text."""
_READERS = 2  # reader threads (each with its own connection and page cache)
_READ_CACHE_KIB = 256  # a read connection's page cache (see _read_connection)
QUICK_READ = 0.001
"""Seconds under which reads count as quick, on average: the loop reads itself while they do
(a hand-off to a reader thread and back costs about 0.06 ms here, ten times a small read);
slower reads (a cold cache, a slow disk) go to the reader threads until they are quick again."""


_NO_ROWS: list[Any] = []  # what a statement without RETURNING returns (never changed)


class Rows(Sequence[dict[str, Any]]):
    """A result's rows, each a dict (as from PostgreSQL) made when it is read: a sqlite3.Row
    finds a column by comparing names one by one (and a run's row has some forty, each read),
    while dicts made all at once would hold a listing of thousands of runs several times over."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: list[str], values: list[tuple[Any, ...]]) -> None:
        self._names = names
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [dict(zip(self._names, row, strict=True)) for row in self._values[index]]
        return dict(zip(self._names, self._values[index], strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self._names
        return (dict(zip(names, row, strict=True)) for row in self._values)


def _query(execute: Callable[[str, Any], sqlite3.Cursor], query: Query) -> Result:
    """One named query; lists go as JSON text (json_each reads them)."""
    params = query.params
    if query.name in _TAKES_LISTS:
        params = {k: json.dumps(v) if v.__class__ is list else v for k, v in params.items()}
    cur = execute(SQL[query.name], params)
    description = cur.description
    if description is None:
        return Result(_NO_ROWS, cur.rowcount)
    names = [column[0] for column in description]
    each = query.each
    if each is not None:
        return Result([each(dict(zip(names, row, strict=True))) for row in cur], cur.rowcount)
    return Result(Rows(names, cur.fetchall()), cur.rowcount)


class ReaderThreads:
    """A few threads that run reads off the event loop, each on a connection of its own (a
    read never waits for the writer: WAL)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], count: int) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._main, name=f"perdure-read-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """`fn(connection)` on a reader thread; its outcome on the calling loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def stop(self) -> None:
        """End the threads (after the reads queued before) and close their connections."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None  # opened on first use: quick reads need none
        try:
            while (item := self._queue.get()) is not None:
                fn, fut, loop = item
                outcome: tuple[asyncio.Future[Any], Any, BaseException | None]
                try:
                    if conn is None:
                        conn = self._connect()
                    outcome = (fut, fn(conn), None)
                except BaseException as exc:  # the caller gets it
                    outcome = (fut, None, exc)
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                    loop.call_soon_threadsafe(_settle, *outcome)
        finally:
            if conn is not None:
                conn.close()


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller stopped waiting
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class SQLiteConnector:
    """`Connector` on a SQLite file."""

    session_liveness = False
    """Capability: no database sessions to tell a dead worker by (the PID check does it)."""
    fast = None
    """Capability: no fast paths; group commit is the writer's own."""

    def __init__(self, path: str | Path, *, auto_migrate: bool = True, poll_interval: float = 0.01):
        self.path = Path(path)
        self.where = str(self.path)
        self.auto_migrate = auto_migrate
        self.poll_interval = poll_interval
        self.notifier = ChangeNotifier()
        self.clock_offset = 0.0
        """Seconds this process's clock of the store runs ahead (perdure.testing's time
        travel; 0 otherwise)."""
        self._readers: ReaderThreads | None = None
        self._reads = Timing()
        """How long reads take: quick ones run on the calling loop."""
        self._local = threading.local()
        self._loop_conns: list[sqlite3.Connection] = []
        self.writer: GroupCommitWriter | None = None
        self._open_lock = threading.Lock()

    def now(self) -> float:
        # every process on the file shares this host's clock (moved on by time travel, in tests)
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        self.clock_offset += seconds

    def observe_clock(self, sent: float, server_now: float) -> None:
        pass

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = FULL")
        # temporary tables (the claim's priorities and its sort, a listing's sort) in memory:
        # with the default, each statement that makes one first sets up a temporary database,
        # which made a claim of one run cost ~4 times as much (~0.2 ms of ~0.05)
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _read_connection(self) -> sqlite3.Connection:
        """A connection for reads, with a small page cache: SQLite empties a reader's cache
        whenever another connection has written since its last read (WAL), which in a busy
        engine is nearly always, so the default 2 MB per connection held memory, not speed."""
        conn = self._connect()
        conn.execute(f"PRAGMA cache_size = -{_READ_CACHE_KIB}")
        return conn

    @staticmethod
    def _run(conn: sqlite3.Connection, operation: Operation[T]) -> T:
        """Run `operation` on `conn`, each step's queries one after the other."""
        execute = conn.execute
        try:
            step = next(operation)
            while True:
                if isinstance(step, Batch):  # (or the Last one: committed with the batch's)
                    step = operation.send([_query(execute, query) for query in step])
                else:
                    step = operation.send(_query(execute, step))
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _read(self, conn: sqlite3.Connection, make: OperationFactory[T]) -> T:
        started = time.monotonic()
        try:
            return self._run(conn, make())
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"SQLite read failed on {self.path}: {exc}") from exc
        finally:
            self._reads.observe(time.monotonic() - started, QUICK_READ)

    def _loop_connection(self) -> sqlite3.Connection:
        """The calling thread's own read connection (an event loop's, for quick reads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._read_connection()
            with self._open_lock:
                self._loop_conns.append(conn)
        return conn

    async def read(self, make: OperationFactory[T], what: str) -> T:
        if self.writer is None:
            await self.open()
        if self._reads.quick:
            return self._read(self._loop_connection(), make)
        assert self._readers is not None
        # in a box emptied here: the loop's handle that resumes this task keeps the future (and
        # its result) for the rest of the task's step, and the thread its last outcome until
        # its next read; a listing of 10,000 runs would stay in memory with them
        box = await self._readers.submit(lambda conn: [self._read(conn, make)])
        return box.pop()

    def write(
        self,
        make: OperationFactory[T],
        what: str,
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> Awaitable[T]:
        # the writer's future itself, once open: no coroutine of its own on the hottest path
        if self.writer is None:
            return self._open_then_write(make, what, topics, durable, give_up_after)
        return self.writer.submit(
            lambda conn: self._run(conn, make()),
            topics,
            durable=durable,
            give_up_after=give_up_after,
        )

    async def _open_then_write(
        self,
        make: OperationFactory[T],
        what: str,
        topics: Collection[str],
        durable: bool,
        give_up_after: float | None,
    ) -> T:
        await self.open()
        return await self.write(make, what, topics, durable=durable, give_up_after=give_up_after)

    async def watch(self) -> None:
        # commits of other processes reach the notifier through the writer's data_version watch
        if self.writer is None:
            await self.open()

    # -- lifecycle and schema ----------------------------------------------------------------

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (once per file; it sticks; waits out busy_timeout)."""
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    def _version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _pending(self, version: int, target: int | None = None) -> list[tuple[int, str, str]]:
        return pending_migrations(MIGRATIONS, version, target, self.where)

    def _apply(
        self, conn: sqlite3.Connection, dry_run: bool, target: int | None = None
    ) -> list[str]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            pending = self._pending(self._version(conn), target)
            if not dry_run:
                for version, _name, sql in pending:
                    for statement in _statements(sql):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [name for _v, name, _sql in pending]

    def _schema_work(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """`work` on a connection of its own in WAL mode, waiting out another process doing the
        same: two processes switching a new file to WAL at once can be told "locked" at once,
        busy timeout or not (a worker and a trigger started together)."""
        deadline = time.monotonic() + 30.0
        while True:
            conn = self._connect()
            try:
                self._use_wal(conn)
                return work(conn)
            except sqlite3.Error as exc:
                code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                locked = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not locked or time.monotonic() > deadline:  # a wrong path fails at once
                    raise StoreUnavailable(
                        f"cannot {what} SQLite database {self.path}: {exc}"
                    ) from exc
            finally:
                conn.close()
            time.sleep(0.05)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """The schema this perdure needs (migrated, or SchemaOutdated without auto_migrate)."""
        pending = self._pending(self._version(conn))
        if pending and not self.auto_migrate:
            raise SchemaOutdated(
                f"database {self.path} is at schema version {self._version(conn)}, "
                f"this perdure needs {SCHEMA_VERSION}; run `perdure migrate`"
            )
        if pending:
            applied = self._apply(conn, dry_run=False)
            if applied:
                log.info("migrated %s: %s", self.path, ", ".join(applied))

    def _open(self) -> None:
        with self._open_lock:
            if self.writer is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema_work(self._prepare, "open")
            writer = GroupCommitWriter(
                self._connect,
                on_commit=self.notifier.notify,
                poll_interval=self.poll_interval,
                path=self.path,
            )
            writer.start()
            self._readers = ReaderThreads(self._read_connection, _READERS)
            self.writer = writer

    async def open(self) -> None:
        if self.writer is None:
            await asyncio.to_thread(self._open)

    def _close(self) -> None:
        with self._open_lock:
            writer, self.writer = self.writer, None
            readers, self._readers = self._readers, None
            conns, self._loop_conns = self._loop_conns, []
            self._local = threading.local()
        if writer is not None:
            writer.stop()
        if readers is not None:
            readers.stop()
        for conn in conns:
            conn.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def detach(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # this loop's read connection
            self._local.conn = None
            with self._open_lock:
                if conn in self._loop_conns:
                    self._loop_conns.remove(conn)
            conn.close()

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        def migrate() -> list[str]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._schema_work(lambda conn: self._apply(conn, dry_run, target), "migrate")

        return await asyncio.to_thread(migrate)

    async def vacuum(self) -> None:
        def vacuum() -> None:
            conn = self._connect()
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("VACUUM")  # rebuilds the file: no free page keeps old bytes
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and the log is emptied
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite VACUUM of {self.path} failed: {exc}") from exc
            finally:
                conn.close()

        await asyncio.to_thread(vacuum)

    # -- worker sessions: none (a dead worker is found by its PID and its heartbeats) --------

    async def hold_session(self, worker_id: str) -> None:
        pass

    async def release_session(self, worker_id: str) -> None:
        pass

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        return []


class SQLiteStore(SQLStore):
    """The store on a SQLite file."""

    db: SQLiteConnector

    def __init__(
        self,
        path: str | Path,
        *,
        blobs: BlobStore,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        auto_migrate: bool = True,
        poll_interval: float = 0.01,
        keyring: Keyring | None = None,
    ) -> None:
        connector = SQLiteConnector(path, auto_migrate=auto_migrate, poll_interval=poll_interval)
        super().__init__(connector, blobs=blobs, inline_limit=inline_limit, keyring=keyring)
        self.path = connector.path


def _statements(script: str) -> list[str]:
    """The statements of a migration script (a trigger's body holds semicolons of its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())  # trailing comments: a no-op
    return statements
