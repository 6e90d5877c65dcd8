"""Helpers for testing code that uses perdure: `harness` runs an app on a store of its own with
a worker in the test's process and travels in time; `capture_logs` collects perdure's log
records; `s3_test_server` serves a local S3 API. See docs/testing.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perdure.errors import ConfigurationError, NonDeterminismError

if TYPE_CHECKING:
    from perdure.app import App
    from perdure.wait_records import Sent, Token, TokenRecord


class Harness:
    """An app on a store of its own with a worker running in this process (see harness)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def advance(self, seconds: float) -> None:
        """Travel `seconds` forward in time: durable sleeps, wait and token timeouts, retry
        backoffs and schedule ticks that fall within come due now, and the worker runs them —
        a flow that sleeps a day is tested in milliseconds."""
        if seconds < 0:
            raise ValueError(f"time travels forward only, got {seconds}")
        await self.app.store.advance_clock(seconds)

    def now(self) -> float:
        """The store's clock (POSIX seconds), time travel included."""
        return self.app.store.now()

    async def complete_token(self, token: Token | str, data: Any = None) -> TokenRecord:
        """Complete a token (see App.complete_token)."""
        return await self.app.complete_token(token, data)

    async def send_event(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> Sent:
        """Send an event (see App.send_event)."""
        return await self.app.send_event(name, payload, idempotency_key=idempotency_key)


@contextlib.asynccontextmanager
async def harness(
    app: App,
    folder: str | Path,
    *,
    concurrency: int = 10,
    check_replay: bool = True,
    replay_each_step: bool = False,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """Run `app` on a fresh SQLite store and blob folder in `folder` (a test's tmp_path), with a
    worker in this process (WorkerConfig `settings`), for the block; then drain the worker and
    close the store. In the block, `await h.advance(86_400)` travels a day forward:

        async def test_reminder(tmp_path):
            async with perdure.testing.harness(app, tmp_path) as h:
                run = await remind.trigger("ana")
                await h.advance(24 * 3600)          # the task's perdure.sleep(one day) ends
                assert await run.result(timeout=5) == "reminded ana"

    With `check_replay` (the default), when the block ends without an error every run it made
    is replayed from the top against the app's code, as a worker resuming it would, without
    running a step: a run whose code took another path on replay (it branched on something
    unrecorded: the time, randomness, a global) fails the test with NonDeterminismError.

    With `replay_each_step`, every run is also made to resume from the top after each of its
    steps (as after a crash at that point), so a divergence fails the run where it happens,
    with the code between steps run again as a real resume would."""
    if app._store is not None:
        raise ConfigurationError(
            f"app {app.name!r} has opened its store already: give the harness an app that has "
            "not (e.g. before anything triggers a run)"
        )
    database, blobs = app.database, app.blobs
    home = os.path.abspath(folder)  # noqa: ASYNC240 - a name, no I/O worth a thread
    app.database, app.blobs = f"sqlite:///{home}/perdure.db", f"file://{home}/blobs"
    worker = app.worker(concurrency=concurrency, replay_each_step=replay_each_step, **settings)
    running = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield Harness(app)
        if check_replay:
            await _check_replays(app)
    finally:
        worker.stop()
        worker.stop()  # (a second stop releases what still runs: a test's end is no drain)
        await running
        await app.close()
        app.database, app.blobs = database, blobs


async def _check_replays(app: App) -> None:
    verdicts = await app.admin.check_replays(runs=100_000)
    failed = [v for v in verdicts if not v.ok]
    if failed:
        raise NonDeterminismError(
            f"{len(failed)} run(s) take another path when replayed: "
            + "; ".join(v.message for v in failed[:5]),
            run_id=failed[0].run_id,
            seq=failed[0].seq,
            called=failed[0].called,
            recorded=failed[0].recorded,
        )


class LogCapture(logging.Handler):
    """Collects perdure's log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def actions(self) -> list[str]:
        """The `action` key of every captured record that has one, in order."""
        return [str(r.action) for r in self.records if hasattr(r, "action")]

    def for_run(self, run_id: str) -> list[logging.LogRecord]:
        """The records about one run."""
        return [r for r in self.records if getattr(r, "run_id", None) == run_id]


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[LogCapture]:
    """Capture the records of the `perdure` loggers for the duration of the block."""
    logger = logging.getLogger("perdure")
    capture = LogCapture()
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(level)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)


class S3TestServerMissing(RuntimeError):
    """moto_server is not installed (it comes with the dev extras)."""


@contextlib.contextmanager
def s3_test_server(log: Path | None = None) -> Iterator[str]:
    """A local S3 API (moto_server, from the `moto[server]` package) on 127.0.0.1 with a free
    port, for the block; yields its endpoint URL. With `log`, its request log goes there."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if server is None:
        raise S3TestServerMissing(
            "moto_server not found: install the dev extras (pip install -e '.[dev]')"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        if not isinstance(out, int):
            out.close()


def new_bucket(endpoint: str) -> str:
    """Create a bucket on the S3 test server; returns a perdure blob URL for it."""
    bucket = f"perdure-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    urllib.request.urlopen(request, timeout=10).close()
    return (
        f"s3://{bucket}/blobs?endpoint={endpoint}&region=us-east-1"
        "&access_key_id=test&secret_access_key=test&allow_http=true"
    )
