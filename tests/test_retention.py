"""Retention: old runs go with their journals, unreferenced blobs go after the grace period,
everything still referenced (or just written) stays."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import perdure
from perdure.errors import RunNotFound
from perdure.records import RunStatus
from perdure.retention import parse_age, purge

from .conftest import ROOT, running_worker, wait_until

BIG = 4096  # values above the app's inline limit (1 KiB here) go to the blob folder


def age_blobs(root: Path, seconds: float) -> None:
    """Make every blob in the folder look `seconds` old (as if written then)."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def blob_keys(root: Path) -> set[str]:
    return {p.parent.name + p.name for p in root.rglob("*") if p.is_file()}


async def test_purge_deletes_old_runs_and_only_unreferenced_blobs(
    make_app: Callable[..., perdure.App], tmp_path: Path
) -> None:
    app = make_app(inline_limit=1024)
    blob_root = tmp_path / "blobs"

    @app.step()
    async def produce(tag: str) -> str:
        return tag * BIG

    @app.task()
    async def job(tag: str, payload: str) -> str:
        return await produce(tag)

    @app.task()
    async def sleeper(payload: str) -> None:
        await perdure.sleep(3600)

    kept = await job.trigger("b", "y" * BIG)  # cancelled before it ran: ended, but kept
    await kept.cancel()
    async with running_worker(app):
        old = await job.trigger("a", "x" * BIG)
        assert await old.result(timeout=30) == "a" * BIG
        waiting = await sleeper.trigger("z" * BIG)
        await wait_until(lambda: _is(app, waiting.id, RunStatus.WAITING))
    # the old job: its arguments and its step value (the run's result is the same bytes: one
    # content-addressed blob); the kept job and the sleeper: their arguments
    assert len(blob_keys(blob_root)) == 4

    store = app.store
    await store.open()
    in_flight = await store.blobs.put(b"q" * BIG)  # a step's value, not referenced yet
    age_blobs(blob_root, 7200)
    fresh = await store.blobs.put(b"r" * BIG)  # written just now, not referenced yet
    # the in-flight value is put again by its step: that refreshes it
    assert await store.blobs.put(b"q" * BIG) == in_flight

    completed = [RunStatus.COMPLETED]
    dry = await purge(store, store.blobs, older_than=0, statuses=completed, dry_run=True)
    assert (dry.runs, dry.blobs) == (1, 0)
    report = await purge(store, store.blobs, older_than=0, statuses=completed)
    assert report.runs == 1
    with pytest.raises(RunNotFound):
        await store.get_run(old.id)
    assert await store.load_journal(old.id) == []
    # the purged run's two blobs are gone; the kept and the waiting run read back whole
    assert report.blobs == 2
    kept_args = (await store.get_run(kept.id)).args
    assert kept_args is not None
    assert b"y" * 16 in kept_args.data
    assert (await store.get_run(waiting.id)).args is not None
    assert {in_flight.key, fresh.key} <= blob_keys(blob_root)
    await app.close()


async def _is(app: perdure.App, run_id: str, status: RunStatus) -> bool:
    return (await app.store.get_run(run_id)).status is status


async def test_a_waiting_parents_children_are_kept(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task(name="quick")
    async def quick(n: int) -> int:
        return n

    @app.task(name="slow")
    async def slow() -> None:
        await perdure.sleep(3600)

    @app.task()
    async def parent() -> None:
        # gathered: both triggers and both waits are numbered at call time
        await asyncio.gather(quick.trigger_and_wait(1), slow.trigger_and_wait())

    async with running_worker(app, concurrency=4):
        handle = await parent.trigger()

        async def quick_done() -> bool:
            runs = await app.store.list_runs(task="quick")
            return len(runs) == 1 and runs[0].status is RunStatus.COMPLETED

        await wait_until(quick_done)
        report = await purge(app.store, app.store.blobs, older_than=0)
        assert report.runs == 0  # the finished child's parent still waits for it
        await handle.cancel()
        await wait_until(lambda: _is(app, handle.id, RunStatus.CANCELLED))
        await asyncio.sleep(0.01)
        report = await purge(app.store, app.store.blobs, older_than=0)
        assert report.runs == 3


def test_ages_parse() -> None:
    assert parse_age("30d") == 30 * 86400
    assert parse_age("12h") == 12 * 3600
    assert parse_age("90m") == 5400
    assert parse_age("45") == 45
    assert parse_age("2w") == 14 * 86400
    with pytest.raises(ValueError, match="not an age"):
        parse_age("soon")


def test_the_purge_command(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "perdure", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    queued = json.loads(
        cli("trigger", "tests.crashapp:app", "pipeline", '["p", 1]', "--json").stdout
    )
    assert cli("runs", "cancel", queued["id"]).returncode == 0
    done = cli("runs", "purge", "--older-than", "0s", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"dry_run": True, "runs": 1, "blobs": 0, "partial_writes": 0}
    done = cli("runs", "purge", "--older-than", "0s", "--json")
    assert json.loads(done.stdout) == {"dry_run": False, "runs": 1, "blobs": 0, "partial_writes": 0}
    assert cli("runs", "show", queued["id"]).returncode != 0
    bad = cli("runs", "purge", "--older-than", "soon")
    assert bad.returncode != 0
    assert "not an age" in bad.stdout + bad.stderr
    running = cli("runs", "purge", "--older-than", "1d", "--status", "running")
    assert running.returncode != 0
    assert "only ended runs" in running.stdout + running.stderr
    asked = cli("runs", "purge", "--older-than", "1d", "--grace", "5m")
    assert asked.returncode != 0
    assert "grace must be at least" in asked.stdout + asked.stderr


async def test_partial_blob_writes_are_removed_at_start_and_by_purge(
    make_sqlite_app: Callable[..., perdure.App], tmp_path: Path
) -> None:
    """A process killed (or a disk filled) while it wrote a blob leaves a temporary file: a
    worker removes the abandoned ones when it starts, and so does a purge; a write in progress
    (a file changed recently) is left alone."""
    spool = tmp_path / "blobs" / "tmp"
    spool.mkdir(parents=True)

    def leave(name: str, age: float) -> Path:
        path = spool / name
        path.write_bytes(b"\x01" * 1000)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    killed = leave("123.456.1.tmp", 3600)
    writing = leave("124.457.2.tmp", 1)
    app = make_sqlite_app()

    @app.task
    async def noop() -> None:
        return None

    async with running_worker(app):
        await wait_until(lambda: not killed.exists())
        assert writing.exists()
    killed_later = leave("125.458.3.tmp", 3600)
    await app.store.open()
    report = await purge(app.store, app.store.blobs, older_than=86_400)
    await app.close()
    assert report.partial == 1
    assert not killed_later.exists()
    assert writing.exists()
