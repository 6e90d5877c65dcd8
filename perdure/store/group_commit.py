"""Group commit for SQLite: one writer thread puts every write waiting in its queue into one
transaction, so concurrent runs share one fsync. Each write runs under its own savepoint: a write
that fails is rolled back alone and its caller gets the error; the others commit.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from perdure.errors import StoreUnavailable

log = logging.getLogger("perdure.store")

Write = Callable[[sqlite3.Connection], Any]
_MAX_BATCH = 512
_STOP = object()


class GroupCommitWriter:
    """A thread that owns the write connection and commits writes in batches."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        on_commit: Callable[[], None],
        name: str = "perdure-writer",
    ) -> None:
        self._connect = connect
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        """Open the connection in the writer thread; raise if that fails."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Commit what is queued, then close the connection."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def submit(self, write: Write) -> Future[Any]:
        """Queue `write(connection)`; the future resolves once its batch is durable."""
        fut: Future[Any] = Future()
        if not self._thread.is_alive():
            fut.set_exception(StoreUnavailable("the store is closed"))
            return fut
        self._queue.put((write, fut))
        return fut

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[Write, Future[Any]]]) -> None:
        delay = 0.005
        while True:
            outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for write, fut in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        result = write(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        outcomes.append((fut, None, exc))
                    else:
                        conn.execute("RELEASE w")
                        outcomes.append((fut, result, None))
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # locked by another process past busy_timeout, or disk trouble: keep trying,
                # loudly; a write is never dropped.
                log.warning(
                    "store write failed, retrying in %.2fs: %s",
                    delay,
                    exc,
                    extra={"action": "write_retry"},
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            break
        self.batches += 1
        self.writes += len(batch)
        for fut, result, error in outcomes:
            try:
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
            except InvalidStateError:  # the caller stopped waiting; the write stands
                pass
        self._on_commit()
