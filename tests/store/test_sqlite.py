"""What only the SQLite store does: group commit, schema versions, other processes' commits."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.blobs import LocalBlobStore
from perdure.errors import (
    SchemaOutdated,
    SchemaTooNew,
    StoreRefused,
    StoreUnavailable,
    TaskFailed,
)
from perdure.ids import new_id
from perdure.records import NewRun, RunStatus, Value
from perdure.store import group_commit
from perdure.store import sqlite as sqlite_store
from perdure.store.connector import Operation, Query
from perdure.store.sqlite import SCHEMA_VERSION, SQLiteStore

from ..conftest import ROOT, running_worker, wait_until
from .test_contract import register


def _store(tmp_path: Path, *, auto_migrate: bool = True) -> SQLiteStore:
    return SQLiteStore(
        tmp_path / "p.db", blobs=LocalBlobStore(tmp_path / "b"), auto_migrate=auto_migrate
    )


def _run(task: str = "t") -> NewRun:
    return NewRun(
        id=new_id(),
        app="a",
        task=task,
        queue="default",
        args=Value(codec="msgpack", data=b"\x90"),
        available_at=time.time(),
    )


def _submit(store: SQLiteStore, write: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]:
    """A raw write through the store's writer thread."""
    writer = store.db.writer
    assert writer is not None
    return writer.submit(write)


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.open()
    await asyncio.gather(*(store.create_run(_run()) for _ in range(200)))
    writer = store.db.writer
    assert writer is not None
    assert writer.writes == 200
    assert writer.batches < 100  # many writes per transaction (one fsync each)
    assert len(await store.list_runs(limit=500)) == 200
    await store.close()


async def test_one_failing_write_does_not_undo_its_batch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.open()
    duplicate = _run()
    await store.create_run(duplicate)

    async def bad() -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO runs (id) VALUES (?)", (duplicate.id,))

        await _submit(store, write)

    results = await asyncio.gather(
        *(store.create_run(_run()) for _ in range(20)), bad(), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, StoreRefused)]
    assert len(refused) == 1
    assert isinstance(refused[0].__cause__, sqlite3.IntegrityError)
    assert len(await store.list_runs(limit=100)) == 21
    await store.close()


async def test_a_write_failing_halfway_in_a_batch_leaves_nothing_and_the_rest_commits(
    tmp_path: Path,
) -> None:
    """A batch runs without savepoints first; a write that fails after writing (an operation
    raising after its first query) sends the batch round again, isolated: none of its rows
    stay, every other write of the batch, before or after it, commits once."""
    store = _store(tmp_path)
    await store.open()

    def insert(run_id: str, *, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
        def write(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO runs (id, app, task, queue, status, args_codec, created_at, "
                "updated_at) VALUES (?, 'a', 't', 'default', 'queued', 'msgpack', 0, 0)",
                (run_id,),
            )
            if fail:
                raise ValueError("changed its mind")
            return run_id

        return write

    ids = [new_id() for _ in range(21)]
    results = await asyncio.gather(
        *(_submit(store, insert(run_id, fail=i == 10)) for i, run_id in enumerate(ids)),
        return_exceptions=True,
    )
    assert isinstance(results[10], ValueError)
    assert results[:10] + results[11:] == ids[:10] + ids[11:]
    writer = store.db.writer
    assert writer is not None
    assert writer.batches == 1  # one batch: the failure was inside it
    stored = {run.id for run in await store.list_runs(limit=100)}
    assert stored == set(ids) - {ids[10]}
    await store.close()


async def test_schema_versions(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert await store.migrate(dry_run=True) == [
        "0001_initial",
        "0002_flow_control",
        "0003_retention",
        "0004_claim_order",
        "0005_running_by_worker",
        "0006_waits",
        "0007_schedules",
        "0008_run_data",
        "0009_api_keys",
        "0010_run_stats",
        "0011_run_tags",
        "0012_trace_context",
        "0013_versions",
        "0014_run_hooks",
        "0015_continue_as_new",
    ]
    await store.open()
    await store.close()
    assert await store.migrate(dry_run=True) == []
    conn = sqlite3.connect(tmp_path / "p.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=f"{SCHEMA_VERSION + 5}.*{SCHEMA_VERSION}"):
        await _store(tmp_path).open()

    fresh = _store(tmp_path / "other", auto_migrate=False)
    with pytest.raises(SchemaOutdated, match="perdure migrate"):
        await fresh.open()


async def test_a_commit_from_another_process_is_noticed_quickly(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.open()
    script = (
        "import asyncio, time, sys\n"
        "from perdure.blobs import LocalBlobStore\n"
        "from perdure.store.sqlite import SQLiteStore\n"
        "from tests.store.test_sqlite import _run\n"
        "async def main():\n"
        f"    s = SQLiteStore({str(tmp_path / 'p.db')!r}, blobs=LocalBlobStore('b'))\n"
        "    await s.open()\n"
        "    await s.create_run(_run('remote'))\n"
        "    print(time.time(), flush=True)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=subprocess.PIPE
    )
    changed = await store.wait_for_change(30.0)
    noticed = time.time()
    stdout, _ = await proc.communicate()
    assert changed
    await register(store, "w", app="a")
    claimed = await store.claim_runs(app="a", worker_id="w", tasks=["remote"], limit=1)
    assert len(claimed) == 1
    committed = float(stdout.decode().split()[0])
    # the poll interval is 10 ms; noticed well before any long poll would have fired
    assert noticed - committed < 1.0, noticed - committed
    await store.close()


async def test_corrupt_journal_row_fails_only_its_run(
    make_sqlite_app: Callable[..., perdure.App],
) -> None:
    app = make_sqlite_app()

    @app.step
    async def one() -> int:
        return 1

    @app.task
    async def flow(n: int) -> int:
        value: int = await one()
        await perdure.sleep(0.3)
        return value + n

    async with running_worker(app):
        bad = await flow.trigger(1)
        good = await flow.trigger(2)
        await wait_until(lambda: _is_waiting(bad))
        conn = sqlite3.connect(app.database.removeprefix("sqlite:///"))
        conn.execute("UPDATE journal SET kind = 'garbage' WHERE run_id = ?", (bad.id,))
        conn.commit()
        conn.close()
        with pytest.raises(TaskFailed, match=r"journal row \(run .*, seq 1\)"):
            await bad.result(timeout=10)
        assert await good.result(timeout=10) == 3


async def _is_waiting(handle: perdure.RunHandle[int]) -> bool:
    return await handle.status() is RunStatus.WAITING


async def test_a_journal_write_that_collides_fails_the_run_even_if_swallowed(
    make_sqlite_app: Callable[..., perdure.App],
) -> None:
    app = make_sqlite_app()
    entered, release = asyncio.Event(), asyncio.Event()

    @app.step(name="first")
    async def first() -> int:
        return 1

    @app.step(name="slow")
    async def slow() -> int:
        entered.set()
        await release.wait()
        return 2

    @app.task(retry=perdure.Retry(max_attempts=3, min_timeout=0.01))
    async def flow() -> str:
        await first()
        await slow()
        try:
            await first()  # its flush writes `slow`'s row, which collides
        except Exception:
            return "swallowed"  # user code must not turn a broken journal into success
        return "clean"

    async with running_worker(app):
        handle = await flow.trigger()
        await asyncio.wait_for(entered.wait(), 10)
        conn = sqlite3.connect(app.database.removeprefix("sqlite:///"))
        conn.execute(
            "INSERT INTO journal (run_id, seq, kind, name, status, started_at, finished_at) "
            "VALUES (?, 2, 'step', 'slow', 'completed', 0, 0)",
            (handle.id,),
        )
        conn.commit()
        conn.close()
        release.set()
        with pytest.raises(TaskFailed, match="journal position 2 is already recorded"):
            await handle.result(timeout=10)
        run = await app.store.get_run(handle.id)
    assert run.attempt == 1  # a broken journal is not retried


async def test_a_write_that_cannot_succeed_fails_instead_of_retrying_forever(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    await store.open()

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    # alone (committed on the loop) and in a batch (committed by the writer thread)
    alone = await asyncio.gather(_submit(store, write), return_exceptions=True)
    batch = await asyncio.wait_for(
        asyncio.gather(
            *(store.create_run(_run()) for _ in range(5)),
            _submit(store, write),
            return_exceptions=True,
        ),
        timeout=10,
    )
    for outcome in (alone[0], batch[-1]):
        assert isinstance(outcome, StoreRefused)
        assert isinstance(outcome.__cause__, sqlite3.OperationalError)
        assert "no_such_table" in str(outcome)
    assert len(await store.list_runs(limit=100)) == 5
    await store.close()


async def test_writes_fail_rather_than_wait_when_the_writer_thread_dies(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await store.open()
    writer = store.db.writer
    assert writer is not None

    def fatal(conn: sqlite3.Connection) -> None:
        raise SystemExit("simulated death of the writer thread")

    with pytest.raises(StoreUnavailable):
        # a batch, so the thread commits it
        await asyncio.wait_for(
            asyncio.gather(_submit(store, fatal), _submit(store, fatal)), timeout=10
        )
    await wait_until(lambda: not writer._thread.is_alive())
    with pytest.raises(StoreUnavailable, match="closed"):
        await asyncio.wait_for(store.create_run(_run()), timeout=10)
    await store.close()


async def test_a_deleted_database_file_is_noticed(tmp_path: Path) -> None:
    """The database file deleted while the store has it open: writes would go to a file nobody
    else sees; they fail instead, saying so."""
    store = _store(tmp_path)
    await store.open()
    await store.create_run(_run())
    for name in os.listdir(tmp_path):
        if name.startswith("p.db"):
            os.unlink(tmp_path / name)
    with pytest.raises(StoreUnavailable, match="deleted or replaced"):
        await store.create_run(_run())
    await store.close()


async def test_the_loop_commits_a_lone_write_only_while_the_disk_is_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone write is committed by its own event loop while commits are quick; after a slow
    one (its COMMIT over QUICK_COMMIT: here the bar is raised over any real fsync), durable
    writes go to the writer thread, so a loop never waits long on the disk, until a commit
    there is quick again."""
    store = _store(tmp_path)
    await store.open()
    where: list[str] = []

    def write(conn: sqlite3.Connection) -> None:
        where.append(threading.current_thread().name)

    loop_thread = threading.current_thread().name
    await _submit(store, write)  # quick: the loop commits it
    monkeypatch.setattr(group_commit, "QUICK_COMMIT", 0.0)  # every fsync now counts as slow
    await _submit(store, write)  # on the loop, and slow
    await _submit(store, write)  # the disk looked slow: the writer thread commits it
    monkeypatch.setattr(group_commit, "QUICK_COMMIT", 60.0)
    await _submit(store, write)  # still the thread (the last commit was slow), and quick
    await _submit(store, write)  # quick: the loop again
    assert where == [loop_thread, loop_thread, "perdure-writer", "perdure-writer", loop_thread]
    await store.close()


async def test_the_loop_reads_itself_only_while_reads_are_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick reads run on the calling loop; once reads are slow on average (the bar raised
    over any real read here), they go to the reader threads until they are quick again."""
    store = _store(tmp_path)
    await store.open()
    run_id, _ = await store.create_run(_run())
    where: list[str] = []

    def read() -> Operation[None]:
        where.append(threading.current_thread().name)
        yield Query("get_run", {"id": run_id})

    loop_thread = threading.current_thread().name
    await store.db.read(read, "test")  # quick: on the loop
    monkeypatch.setattr(sqlite_store, "QUICK_READ", 0.0)  # every read now counts as slow
    await store.db.read(read, "test")  # on the loop, and slow
    await store.db.read(read, "test")  # reads looked slow: a reader thread
    monkeypatch.setattr(sqlite_store, "QUICK_READ", 60.0)
    await store.db.read(read, "test")  # still a reader thread (the last was slow), quick
    await store.db.read(read, "test")  # quick: the loop again
    assert where[0] == where[1] == where[4] == loop_thread
    assert where[2].startswith("perdure-read")
    assert where[3].startswith("perdure-read")
    await store.close()


async def test_every_connection_keeps_its_temporary_tables_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's statement needs temporary tables (the priorities it visits, the runs it
    sorts); with SQLite's default temp_store each one sets up a temporary database first, which
    made a claim of one run ~4 times as costly. The writer's connection, the loop's and a
    reader thread's all keep them in memory."""
    store = _store(tmp_path)
    await store.open()
    writer = store.db.writer
    assert writer is not None

    def temp_store(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA temp_store").fetchone()[0])

    def read() -> Operation[int]:
        rows = yield Query("get_run", {"id": "none"})
        return len(rows.rows)

    seen = [await writer.submit(temp_store)]
    await store.db.read(read, "test")  # on the loop: its connection is now open
    seen.append(temp_store(store.db._loop_connection()))
    monkeypatch.setattr(sqlite_store, "QUICK_READ", 0.0)  # reads now go to a reader thread
    await store.db.read(read, "test")
    await store.db.read(read, "test")
    readers = store.db._readers
    assert readers is not None
    seen.append(await readers.submit(temp_store))
    assert seen == [2, 2, 2]  # 2: MEMORY
    await store.close()


class _Listing:
    """A read's result that can be watched for release (weakref)."""


async def test_a_reader_thread_holds_no_read_result_once_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read done on a reader thread is let go by the store once its caller has it: neither
    the thread (waiting for the next read) nor the loop's future (kept until the caller's
    task yields) holds it, so a long listing is freed as soon as its caller drops it."""
    store = _store(tmp_path)
    await store.open()
    monkeypatch.setattr(sqlite_store, "QUICK_READ", 0.0)  # every read counts as slow

    where: list[str] = []

    def read() -> Operation[_Listing]:
        where.append(threading.current_thread().name)
        yield Query("get_run", {"id": "nothing"})
        return _Listing()

    await store.db.read(read, "test")  # on the loop (slow: the next ones go to the threads)
    listing = await store.db.read(read, "test")
    assert where[-1].startswith("perdure-read")
    released = weakref.ref(listing)
    del listing
    assert released() is None  # (no await in between: the future is still the loop's)
    await store.close()


def test_processes_opening_a_new_file_at_once_all_open(tmp_path: Path) -> None:
    """Processes that open a new database file at the same moment (each switching it to WAL
    and migrating it: a worker and a trigger started together) wait each other out instead of
    failing with "database is locked"."""
    script = (
        "import asyncio, sys\n"
        "from perdure.blobs import LocalBlobStore\n"
        "from perdure.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    store = SQLiteStore(sys.argv[1], blobs=LocalBlobStore(sys.argv[2]))\n"
        "    await store.open()\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    for attempt in range(4):
        database = tmp_path / f"new-{attempt}.db"
        opening = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(database), str(tmp_path / "blobs")],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in opening:
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
