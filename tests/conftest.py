"""Shared fixtures: apps on a fresh SQLite file, in-process workers, worker subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.store import sqlite_path
from perdure.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ("tests.served",)  # the `served` fixture: a real server and worker


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[None]:
    """Check the server and migrate the template database once per session."""
    from . import pg

    pg.require_postgres()
    pg.create_template()
    yield
    pg.drop_template()


@pytest.fixture
def postgres_url(postgres_template: None) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, cloned from the migrated template."""
    from . import pg

    name = pg.create_database()
    yield pg.url_for(name)
    pg.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """This test's own database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path}/perdure.db"


def _app_factory(database: str, tmp_path: Path) -> Callable[..., perdure.App]:
    def make(name: str = "test", **kwargs: Any) -> perdure.App:
        return perdure.App(name, database=database, blobs=f"file://{tmp_path}/blobs", **kwargs)

    return make


@pytest.fixture
def make_app(database_url: str, tmp_path: Path) -> Callable[..., perdure.App]:
    """A factory of apps on this test's own database (each store in turn) and blob folder."""
    return _app_factory(database_url, tmp_path)


@pytest.fixture
def make_sqlite_app(tmp_path: Path) -> Callable[..., perdure.App]:
    """A factory of apps on this test's own SQLite file, for SQLite-specific tests."""
    return _app_factory(f"sqlite:///{tmp_path}/perdure.db", tmp_path)


STORE_TABLES = (
    "runs",
    "journal",
    "attempts",
    "workers",
    "queues",
    "tokens",
    "events",
    "messages",
    "waits",
    "schedules",
    "streams",
    "api_keys",
    "run_tags",
)
"""Every table of the store's schema."""


def table_rows(app: perdure.App, table: str) -> list[tuple[Any, ...]]:
    """Every row of one table of the app's store, read straight from the database."""
    if app.database.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(app.database.removeprefix("sqlite:///"))) as db:
            return [tuple(row) for row in db.execute(f"SELECT * FROM {table}")]
    import psycopg

    with psycopg.connect(app.database) as conn:
        return [tuple(row) for row in conn.execute(f"SELECT * FROM perdure.{table}")]


def stored_bytes(app: perdure.App) -> bytes:
    """Every byte the app's database holds: the SQLite files, or every row of every perdure
    table in PostgreSQL (bytea columns raw, the others as text)."""
    if app.database.startswith("sqlite:///"):
        db = Path(app.database.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in db.parent.glob(f"{db.name}*"))
    import psycopg

    parts: list[bytes] = []
    with psycopg.connect(app.database) as conn:
        for table in STORE_TABLES:
            for row in conn.execute(f"SELECT * FROM perdure.{table}"):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        parts.append(bytes(value))
                    elif value is not None:
                        parts.append(str(value).encode())
    return b"\n".join(parts)


@contextlib.asynccontextmanager
async def running_worker(app: perdure.App, **settings: Any) -> AsyncIterator[Worker]:
    """Run a worker of `app` in this event loop for the duration of the block."""
    await app.store.open()
    worker = app.worker(**settings)
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    finally:
        worker.stop()
        await task
        await app.close()


def faketime_env(offset: str) -> dict[str, str]:
    """The environment of a process whose clock is moved by `offset` ("+2h", "-2h"), through
    libfaketime preloaded in it (not the faketime wrapper, which would stand between the test
    and the process it signals). Skips (fails, with CI=true) when libfaketime is missing."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        message = "libfaketime is not installed: apt-get install faketime (scripts/test does this)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {"LD_PRELOAD": found[0], "FAKETIME": offset}


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll `predicate` (sync or async) until it is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


class WorkerProcess:
    """`perdure worker MODULE:APP` in a subprocess."""

    def __init__(
        self,
        spec: str,
        env: dict[str, str],
        *,
        log: Path,
        concurrency: int = 4,
        args: tuple[str, ...] = (),
    ) -> None:
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in kill()/terminate()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perdure",
                "worker",
                spec,
                "--concurrency",
                str(concurrency),
                *args,
            ],
            # faulthandler: SIGABRT makes the worker print every thread's stack to its log
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1", **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no drain."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()

    def wait_started(self, timeout: float = 30.0) -> None:
        """Until the worker has registered and serves (its log says so)."""
        deadline = time.monotonic() + timeout
        while " started: app " not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} did not start:\n{self.dump_stacks()}")
            time.sleep(0.02)

    def freeze(self, database_url: str) -> None:
        """SIGSTOP, outside a write to an SQLite database: a process stopped inside one holds
        the database's write lock, and every other process waits until it resumes (SQLite's
        locking, not a takeover case). On PostgreSQL, at once (its locks are per session and
        a stopped worker's do not block the others' claims)."""
        path = sqlite_path(database_url)
        for _ in range(200):
            os.kill(self.proc.pid, signal.SIGSTOP)
            if path is None:
                return
            try:
                conn = sqlite3.connect(path, timeout=0)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.rollback()
                    return
                finally:
                    conn.close()
            except sqlite3.OperationalError:  # stopped inside a write: let it finish it
                os.kill(self.proc.pid, signal.SIGCONT)
                time.sleep(0.005)
        raise AssertionError(f"worker {self.pid} holds the SQLite write lock all the time")

    def dump_stacks(self) -> str:
        """Abort the worker with its stacks written to its log; return the log's tail."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        return self.log.read_text(errors="replace")[-20_000:]

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the drain."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def worker_processes(request: pytest.FixtureRequest) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses started by a test; any left alive are killed at the end. When the
    test failed, each one still alive prints its threads' stacks and log first."""
    started: list[WorkerProcess] = []
    yield started
    failed = request.node.stash.get(_CALL_FAILED, False)
    for proc in started:
        if failed:
            alive = proc.proc.poll() is None
            state = "alive: its log and stacks" if alive else f"exit {proc.proc.returncode}"
            print(f"--- worker {proc.pid} when the test failed ({state}) ---")
            print(proc.dump_stacks())
        proc.kill()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API (moto_server) on 127.0.0.1 with a random port, for the session."""
    from perdure.testing import S3TestServerMissing, s3_test_server

    try:
        with s3_test_server() as endpoint:
            yield endpoint
    except S3TestServerMissing as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def s3_blob_url(s3_server: str) -> str:
    """A fresh bucket on the S3 test server, as a perdure blob URL."""
    from perdure.testing import new_bucket

    return new_bucket(s3_server)
