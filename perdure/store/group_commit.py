"""Group commit for SQLite: one writer thread puts every write waiting in its queue into one
transaction, so concurrent runs share one fsync. A write that fails is rolled back alone and its
caller gets the error; the others commit. Writes rarely fail, so a batch first runs without
savepoints (two statements less per write); if one of its writes fails, the batch is rolled back
and run again with a savepoint around each write (every write can be run again: a busy
database already asks for that).

Writes that need not survive a power cut (a claim, a heartbeat: losing one only means the run is
claimed again) are marked `durable=False`; a batch made only of such writes commits without the
fsync (synchronous=NORMAL: still safe against a process crash). The next durable commit makes
them durable too, since the WAL is fsynced in order.

The writer thread also watches `PRAGMA data_version` on its own connection, which changes only
when another connection (another process) commits: that is how this process notices triggers
and completions made elsewhere, within `poll_interval`.

Fast path: writes are handed over once per event-loop iteration. When an iteration produced a
single write, the writer is idle and the disk is quick, the loop commits it itself: a thread
hand-off and the wake-up back cost more than a commit whose fsync takes a tenth of a
millisecond (measured: the W5 latency +37%, a step +15% when every commit went through the
thread). The disk is quick while a lone durable write's COMMIT (its fsync) takes under QUICK_COMMIT
(2 ms) on average (a moving average: one spike does not count); a slow or busy disk sends every
durable write to the thread until commits there are quick again, so an event loop never waits
long on the disk. When several writes are waiting, they go to the thread as one batch, so the
fsync overlaps with the loop's work. Either way a write resolves once it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perdure.errors import StoreRefused, StoreUnavailable

log = logging.getLogger("perdure.store")

WriteFn = Callable[[sqlite3.Connection], Any]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
_MAX_BATCH = 512  # writes a batch grows to (an event-loop iteration's writes stay together)
QUICK_COMMIT = 0.002
"""Seconds under which durable COMMITs (their fsync) count as quick, on average: the loop may
commit a lone write itself while they do (see the module's docstring)."""


class Timing:
    """Whether some work is quick enough for an event loop to do itself: a moving average of
    how long it takes (one spike does not count), against a bar."""

    def __init__(self) -> None:
        self.average = 0.0
        """Seconds, a moving average."""
        self.quick = True
        """The average is under the bar of the last observation."""

    def observe(self, seconds: float, bar: float) -> None:
        """One more measure of the work."""
        self.average += 0.1 * (seconds - self.average)
        self.quick = self.average < bar


_STOP = object()


@dataclass(slots=True)
class _Write:
    fn: WriteFn
    future: asyncio.Future[Any]
    topics: Collection[str]
    durable: bool
    give_up_at: float | None = None
    """time.monotonic() after which a write that still cannot commit fails (None: never)."""


class GroupCommitWriter:
    """A thread that owns the write connection and commits writes in batches."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        on_commit: Callable[[set[str] | None], None],
        poll_interval: float,
        name: str = "perdure-writer",
        path: Path | None = None,
    ) -> None:
        self._connect = connect
        self._path = path
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the database file when the writer opened it."""
        self._gone = False
        self._on_commit = on_commit
        self._poll_interval = poll_interval
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # whoever commits holds it: the thread or a loop
        self._conn: sqlite3.Connection | None = None
        self._pending: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._synchronous = "FULL"
        self._data_version = 0
        self._lone_commits = Timing()
        """How long a lone durable write's COMMIT (its fsync) takes: the loop may commit a lone
        write itself while it is quick."""
        self._last_transient: sqlite3.Error | None = None
        """Why the last commit attempt that could not commit for now failed."""
        self.batches = 0
        self.writes = 0
        self.fsyncs = 0

    def start(self) -> None:
        """Open the connection in the writer thread; raise if that fails."""
        self._thread.start()
        self._started.wait()
        if isinstance(self._error, sqlite3.Error):
            raise StoreUnavailable(f"cannot open the SQLite writer: {self._error}") from self._error
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Commit what is queued, then close the connection."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def submit(
        self,
        fn: WriteFn,
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> asyncio.Future[Any]:
        """Queue `fn(connection)` from a running event loop; the future resolves once its batch
        is committed (and fsynced if `durable`); `topics` are announced to on_commit if the
        write succeeded. While the database cannot take writes (locked, disk full) a write is
        retried, for ever, or until `give_up_after` seconds have passed: then it fails with
        StoreUnavailable, and nothing of it is written."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._thread.is_alive():
            fut.set_exception(StoreUnavailable("the store is closed"))
            return fut
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._dispatch, loop)  # after the writes of this iteration
        give_up_at = None if give_up_after is None else time.monotonic() + give_up_after
        pending.append(_Write(fn, fut, topics, durable, give_up_at))
        return fut

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        writes = self._pending.pop(loop, [])
        if (
            len(writes) == 1
            and (self._lone_commits.quick or not writes[0].durable)  # no fsync: no wait
            and self._queue.empty()
            and self._lock.acquire(blocking=False)
        ):
            try:
                conn = self._conn  # read under the lock: the thread closes it under the lock
                done = None
                if conn is not None:
                    self._check_foreign(conn)
                    done = self._try_commit(conn, writes)
            finally:
                self._lock.release()
            if done is not None:
                outcomes, topics = done
                _resolve(outcomes)
                if topics:
                    self._on_commit(topics)
                return
        if not self._thread.is_alive():
            for write in writes:
                if not write.future.done():
                    write.future.set_exception(StoreUnavailable("the store is closed"))
            return
        self._queue.put(writes)  # busy, or more than one: the thread batches them
        if not self._thread.is_alive():  # it ended while we queued: nobody will commit them
            self._fail_queued()

    def _main(self) -> None:
        try:
            conn = self._connect()
            # never wait inside SQLite: the inline path must not block its loop, and the thread
            # retries with its own backoff
            conn.execute("PRAGMA busy_timeout = 0")
            self._data_version = self._read_data_version(conn)
            self._identity = self._file_identity()
            self._conn = conn
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._serve(conn)
        except BaseException:  # logged, not raised: every write waiting on it fails below
            log.exception("the store's writer thread failed", extra={"action": "writer_failed"})
        finally:
            with self._lock:
                self._conn = None
                conn.close()
            self._fail_queued()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._poll_interval)
            except queue.Empty:
                with self._lock:
                    self._check_foreign(conn)
                continue
            if item is _STOP:
                return
            batch: list[_Write] = item  # an event-loop iteration's writes, and those queued since
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch += item
            try:
                self._commit(conn, batch)
            except BaseException as exc:
                self._fail(batch, exc)
                raise
            if stop:
                return

    def _fail_queued(self) -> None:
        """The thread is ending: writes still queued (submitted while it stopped) fail."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._fail(item, None)

    @staticmethod
    def _fail(batch: list[_Write], cause: BaseException | None) -> None:
        error = StoreUnavailable("the store is closed" if cause is None else f"{cause!r}")
        error.__cause__ = cause
        for write in batch:
            outcome: list[Outcome] = [(write.future, None, error)]
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                write.future.get_loop().call_soon_threadsafe(_resolve, outcome)

    @staticmethod
    def _read_data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        try:
            version = self._read_data_version(conn)
        except sqlite3.Error:
            return
        if version != self._data_version:
            self._data_version = version
            self._on_commit(None)  # another process committed: it may have changed anything

    def _set_synchronous(self, conn: sqlite3.Connection, durable: bool) -> None:
        wanted = "FULL" if durable else "NORMAL"
        if wanted != self._synchronous:
            conn.execute(f"PRAGMA synchronous = {wanted}")
            self._synchronous = wanted

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        """Commit `batch` from the writer thread, retrying while the database is busy."""
        delay, waited = 0.001, 0.0
        while True:
            with self._lock:
                self._check_foreign(conn)
                done = self._try_commit(conn, batch)
            if done is not None:
                break
            # locked by another process, or disk trouble: keep trying; a write is never dropped,
            # unless its caller gave up waiting (a trigger), when it fails and says why
            batch = self._give_up(batch)
            if not batch:
                return
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.25)
            if waited >= 1.0:
                log.warning(
                    "store writes are blocked: %s; still retrying (nothing is dropped)",
                    _why_blocked(self._last_transient),
                    extra={"action": "write_retry"},
                )
                waited = 0.0
        outcomes, topics = done
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, resolved in by_loop.items():  # one wake-up per loop and batch
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                loop.call_soon_threadsafe(_resolve, resolved)
        if topics:
            self._on_commit(topics)

    def _file_identity(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            found = os.stat(self._path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _file_gone(self) -> bool:
        """True once the database file was deleted or replaced under the open connection
        (writes would go to a file nobody else sees: they must fail, and say so)."""
        if self._identity is None or self._gone:
            return self._gone
        if self._file_identity() != self._identity:
            self._gone = True
            log.error(
                "the SQLite database file %s was deleted or replaced while in use; every write "
                "fails from now on (restore the file, or restart with the new one)",
                self._path,
                extra={"action": "database_gone"},
            )
        return self._gone

    def _give_up(self, batch: list[_Write]) -> list[_Write]:
        """Fail the writes of `batch` whose callers stopped waiting; the others."""
        now = time.monotonic()
        kept = []
        for write in batch:
            if write.give_up_at is None or now < write.give_up_at:
                kept.append(write)
                continue
            error = StoreUnavailable(f"SQLite write gave up: {_why_blocked(self._last_transient)}")
            outcome: list[Outcome] = [(write.future, None, error)]
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                write.future.get_loop().call_soon_threadsafe(_resolve, outcome)
        return kept

    def _try_commit(
        self, conn: sqlite3.Connection, batch: list[_Write], *, isolate: bool = False
    ) -> tuple[list[Outcome], set[str]] | None:
        """One transaction for `batch`; None (all rolled back) if SQLite could not commit for
        now (busy, I/O). Any other failure fails the whole batch: a write is never left
        waiting. With `isolate`, each write runs under a savepoint; without, the first write
        of a batch to fail sends the whole batch round again, isolated (a batch of one never
        needs it: the transaction is only its own)."""
        durable = any(w.durable for w in batch)
        if self._file_gone():
            gone = StoreUnavailable(
                f"the SQLite database file {self._path} was deleted or replaced while in use"
            )
            return [(w.future, None, gone) for w in batch], set()
        outcomes: list[Outcome] = []
        topics: set[str] = set()
        try:
            self._set_synchronous(conn, durable)
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                if isolate:
                    conn.execute("SAVEPOINT w")
                try:
                    result = write.fn(conn)
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error | UnicodeError):
                        if isinstance(exc, sqlite3.Error) and transient(exc):
                            raise  # busy or I/O: retry the batch, not a user-visible failure
                        refused = StoreRefused(f"SQLite refused the write: {exc}")
                        refused.__cause__ = exc
                        exc = refused  # a value too big, a constraint: retrying cannot help
                    if not isolate and len(batch) > 1:
                        conn.execute("ROLLBACK")  # the writes before it too: again, isolated
                        return self._try_commit(conn, batch, isolate=True)
                    self._undo(conn, isolate)
                    outcomes.append((write.future, None, exc))
                else:
                    if isolate:
                        conn.execute("RELEASE w")
                    outcomes.append((write.future, result, None))
                    topics.update(write.topics)
            if conn.in_transaction:
                started = time.monotonic()
                conn.execute("COMMIT")
                if durable and len(batch) == 1:  # what a lone write costs a loop, on average
                    self._lone_commits.observe(time.monotonic() - started, QUICK_COMMIT)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and transient(exc):
                log.debug("store write attempt failed: %s", exc, extra={"action": "write_retry"})
                self._last_transient = exc
                return None
            log.error("store write failed: %s", exc, extra={"action": "write_failed"})
            failed = StoreUnavailable(f"SQLite write failed: {exc}")
            failed.__cause__ = exc
            return [(w.future, None, failed) for w in batch], set()
        # our own commit does not move data_version on this connection; nothing to re-read
        self.batches += 1
        self.writes += len(batch)
        self.fsyncs += durable
        return outcomes, topics

    @staticmethod
    def _undo(conn: sqlite3.Connection, isolate: bool) -> None:
        """Roll back the write that just failed: its savepoint, or (alone) the transaction."""
        if isolate:
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
        elif conn.in_transaction:
            conn.execute("ROLLBACK")


_TRANSIENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def _why_blocked(exc: sqlite3.Error | None) -> str:
    """What a transient SQLite error means for the person reading the log."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return "disk full (free space on the database's disk to go on)"
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return "the database is locked by another process"
    if code == sqlite3.SQLITE_IOERR:
        return f"disk I/O error ({exc})"
    return f"{exc}" if exc is not None else "locked by another process, or disk trouble"


def transient(exc: sqlite3.Error) -> bool:
    """True for errors that pass (another process holds the lock, a full or failing disk):
    worth retrying. Others (a missing table, a corrupt file) fail the write."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _TRANSIENT


def _resolve(outcomes: list[Outcome]) -> None:
    for fut, result, error in outcomes:
        if fut.done():  # the caller stopped waiting; the write stands
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
