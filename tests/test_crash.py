"""Crash safety with real processes: workers killed with SIGKILL, side effects checked on disk."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure import serde
from perdure.records import EntryKind, RunStatus

from . import crashapp
from .conftest import WorkerProcess, wait_until

pytestmark = pytest.mark.crash


@dataclass
class CrashEnv:
    """One test's database, side-effect log and gate file."""

    tmp: Path
    app: perdure.App

    @property
    def log(self) -> Path:
        return self.tmp / "side-effects.log"

    @property
    def gate(self) -> Path:
        return self.tmp / "gate"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PERDURE_DATABASE_URL": self.app.database,
            "PERDURE_BLOB_URL": self.app.blobs,
            "CRASH_LOG": str(self.log),
            "CRASH_GATE": str(self.gate),
            **extra,
        }

    def lines(self) -> list[list[str]]:
        return crashapp.records(self.log)

    def starts(self) -> dict[tuple[str, int], list[float]]:
        """When each step (run key, index) started, by the log, each time it did."""
        found: dict[tuple[str, int], list[float]] = {}
        for parts in self.lines():
            if parts[0] == "start":
                found.setdefault((parts[1], int(parts[2])), []).append(float(parts[3]))
        return found

    def count(self, event: str, run_key: str, index: int) -> int:
        return sum(1 for parts in self.lines() if parts[:3] == [event, run_key, str(index)])


@pytest.fixture
def crash(tmp_path: Path, database_url: str) -> CrashEnv:
    app = perdure.App("crash", database=database_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="pipeline")(crashapp.pipeline.fn)
    return CrashEnv(tmp_path, app)


def _start(crash: CrashEnv, procs: list[WorkerProcess], **env: str) -> WorkerProcess:
    proc = WorkerProcess(
        "tests.crashapp:app",
        crash.env(**env),
        log=crash.tmp / f"worker-{len(procs)}.log",
    )
    procs.append(proc)
    return proc


async def _kill_after_a_while(proc: WorkerProcess, rng: random.Random) -> None:
    """SIGKILL `proc` a random while after it started serving (timed from its start line:
    the interpreter's start-up varies from machine to machine more than the work does)."""
    await wait_until(functools.partial(_started, proc), timeout=30)
    await asyncio.sleep(rng.uniform(0.05, 0.5))
    proc.kill()


def _started(proc: WorkerProcess) -> bool:
    return " started: app " in proc.log.read_text(errors="replace")


async def test_kill_during_step_3_of_5_resumes_after_step_2(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    crash.gate.touch()
    first = _start(crash, worker_processes, CRASH_GATE_STEP="3")
    handle = await crash.app.get_task("pipeline").trigger("r", 5)
    await wait_until(lambda: crash.count("start", "r", 3) == 1, timeout=30)
    first.kill()
    crash.gate.unlink()
    _start(crash, worker_processes)
    result = await handle.result(timeout=30)
    assert result == [f"r:{i}" for i in range(1, 6)]
    for index in (1, 2):
        assert crash.count("start", "r", index) == 1, f"step {index} ran again"
        assert crash.count("done", "r", index) == 1
    assert crash.count("start", "r", 3) == 2  # interrupted by the kill, then run again
    for index in (3, 4, 5):
        assert crash.count("done", "r", index) == 1
    await crash.app.close()


async def test_kill_loop_loses_nothing_and_repeats_no_recorded_step(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    runs, steps, kills = 50, 5, 12
    task = crash.app.get_task("pipeline")
    handles = [await task.trigger(f"k{i}", steps, 0.01) for i in range(runs)]
    rng = random.Random(20261125)
    for _ in range(kills):
        await _kill_after_a_while(_start(crash, worker_processes), rng)
    _start(crash, worker_processes)
    for handle in handles:
        key = f"k{handles.index(handle)}"
        assert await handle.result(timeout=120) == [f"{key}:{i}" for i in range(1, steps + 1)]

    starts = crash.starts()
    store = crash.app.store
    repeated = 0
    for i, handle in enumerate(handles):
        run = await store.get_run(handle.id)
        assert run.status is RunStatus.COMPLETED
        completions = [
            a for a in await store.load_attempts(handle.id) if a.seq == 0 and a.error is None
        ]
        assert len(completions) == 1, f"run {handle.id} completed {len(completions)} times"
        journal = await store.load_journal(handle.id)
        assert [e.seq for e in journal if e.kind is EntryKind.STEP] == list(range(1, steps + 1))
        for entry in journal:
            times = starts[(f"k{i}", entry.seq)]
            # a step may run again only if it was never recorded: no start after the record
            assert all(t < entry.finished_at for t in times), (handle.id, entry.seq, times)
            repeated += len(times) - 1
    # the kills did interrupt work (else this test proves nothing)
    assert repeated > 0 or len(crash.lines()) > runs * steps * 2
    await crash.app.close()


async def test_kill_loop_continues_each_chain_once_and_repeats_no_recorded_turn(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    """Looping agents that continue as new runs every 5 turns, their workers SIGKILLed again
    and again: every chain ends with its last turn, each of its runs continued exactly once
    (the new run inserted with the old one's end, never twice, never lost), each turn recorded
    once, and no recorded turn ran again."""
    chains, turns, every, kills = 8, 30, 5, 8
    crash.app.task(name="looping")(crashapp.looping.fn)
    task = crash.app.get_task("looping")
    handles = [await task.trigger(f"c{i}", 0, turns, every, 0.01) for i in range(chains)]
    rng = random.Random(20261130)
    for _ in range(kills):
        await _kill_after_a_while(_start(crash, worker_processes), rng)
    _start(crash, worker_processes)
    for handle in handles:
        assert await handle.result(timeout=120) == turns

    starts = crash.starts()
    store = crash.app.store
    repeated = 0
    for i, handle in enumerate(handles):
        chain: list[perdure.records.RunRecord] = []
        run_id: str | None = handle.id
        while run_id is not None:
            run = await store.get_run(run_id)
            assert run.status is RunStatus.COMPLETED
            chain.append(run)
            run_id = run.continued_as
        assert len(chain) == turns // every
        recorded: list[tuple[float, int]] = []  # (when, turn) of each recorded turn
        for run in chain:
            for entry in await store.load_journal(run.id):
                if entry.kind is EntryKind.STEP:
                    assert entry.value is not None
                    assert entry.finished_at is not None
                    key, number = _decoded(entry.value).split(":")  # the step's result
                    assert key == f"c{i}"
                    recorded.append((entry.finished_at, int(number)))
        assert [turn for _at, turn in recorded] == list(range(1, turns + 1))
        for finished_at, turn in recorded:
            times = starts[(f"c{i}", turn)]
            assert all(t < finished_at for t in times), (handle.id, turn, times)
            repeated += len(times) - 1
    runs = await store.list_runs(task="looping", limit=1000)
    assert len(runs) == chains * (turns // every)  # no continuation made twice
    assert repeated > 0 or len(crash.lines()) > chains * turns * 2
    await crash.app.close()


def _decoded(value: Any) -> str:
    result = serde.decode(value.data, codec=serde.Codec(value.codec), what="a turn")
    assert isinstance(result, str)
    return result


async def _takeover_seconds(
    crash: CrashEnv, worker_processes: list[WorkerProcess], **env: str
) -> tuple[float, Any]:
    crash.gate.touch()
    victim = _start(crash, worker_processes, CRASH_GATE_STEP="2", **env)
    handle = await crash.app.get_task("pipeline").trigger("t", 3)
    await wait_until(lambda: crash.count("start", "t", 2) == 1, timeout=30)
    survivor = _start(crash, worker_processes, **env)
    store = crash.app.store
    await wait_until(lambda: _alive_workers(store, 2), timeout=30)
    crash.gate.unlink()  # the victim's step would now finish, but it is killed first
    victim.kill()
    killed_at = time.time()
    await wait_until(lambda: crash.count("start", "t", 2) == 2, timeout=30)
    takeover = max(float(p[3]) for p in crash.lines() if p[:3] == ["start", "t", "2"])
    assert await handle.result(timeout=30) == ["t:1", "t:2", "t:3"]
    assert crash.count("start", "t", 1) == 1
    survivor.terminate()
    await crash.app.close()
    return takeover - killed_at, survivor


async def _alive_workers(store: Any, count: int) -> bool:
    return len(await store.live_workers(app="crash")) >= count


async def test_dead_worker_on_same_host_is_taken_over_within_a_second(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    seconds, survivor = await _takeover_seconds(crash, worker_processes)
    assert seconds < 1.0, f"takeover took {seconds:.2f}s"
    # the PID check (both stores), or on PostgreSQL the session lock, whichever sees it first
    assert "died (" in survivor.log.read_text()


async def test_stalled_worker_is_taken_over_through_lease_expiry(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    seconds, survivor = await _takeover_seconds(
        crash,
        worker_processes,
        PERDURE_PID_CHECK="0",
        PERDURE_SESSION_CHECK="0",
        PERDURE_HEARTBEAT_INTERVAL="0.2",
        PERDURE_MISSED_HEARTBEATS="3",
    )
    assert seconds >= 0.4, "taken over before the lease could expire"
    assert seconds < 5.0
    assert "stalled (no heartbeat" in survivor.log.read_text()


async def test_stopped_worker_is_taken_over_and_cannot_record_after_resuming(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    env = {"PERDURE_HEARTBEAT_INTERVAL": "0.2", "PERDURE_MISSED_HEARTBEATS": "3"}
    crash.gate.touch()
    victim = _start(crash, worker_processes, CRASH_GATE_STEP="2", **env)
    handle = await crash.app.get_task("pipeline").trigger("s", 3)
    await wait_until(lambda: crash.count("start", "s", 2) == 1, timeout=30)
    survivor = _start(crash, worker_processes, **env)
    await wait_until(lambda: _alive_workers(crash.app.store, 2), timeout=30)
    victim.freeze(crash.app.database)  # alive (its PID exists) but not running
    crash.gate.unlink()
    assert await handle.result(timeout=30) == ["s:1", "s:2", "s:3"]
    os.kill(victim.pid, signal.SIGCONT)  # it finishes its step 2 body, then must not record
    await wait_until(lambda: "declared dead" in victim.log.read_text(), timeout=30)
    journal = await crash.app.store.load_journal(handle.id)
    assert [e.seq for e in journal] == [1, 2, 3]
    assert "stalled (no heartbeat" in survivor.log.read_text()
    assert crash.count("start", "s", 1) == 1
    await crash.app.close()


async def test_worker_with_a_blocked_event_loop_loses_its_runs(
    crash: CrashEnv, worker_processes: list[WorkerProcess]
) -> None:
    crash.app.task(name="hogging")(crashapp.hogging.fn)
    env = {"PERDURE_HEARTBEAT_INTERVAL": "0.2", "PERDURE_MISSED_HEARTBEATS": "3"}
    victim = _start(crash, worker_processes, **env)
    handle = await crash.app.get_task("hogging").trigger("h", 4.0)
    await wait_until(lambda: crash.count("start", "h", 1) == 1, timeout=30)
    survivor = _start(crash, worker_processes, **env)
    # the victim's heartbeat thread runs, but its loop is blocked: it must stop vouching
    await wait_until(lambda: crash.count("start", "h", 1) == 2, timeout=30)
    assert crash.count("done", "h", 1) == 0  # taken over while the first body still ran
    assert await handle.result(timeout=30) == "h"
    await wait_until(lambda: "event loop unresponsive" in victim.log.read_text(), timeout=30)
    assert "stalled (no heartbeat" in survivor.log.read_text()
    await crash.app.close()


async def test_postgres_sees_a_dead_worker_by_its_session_within_a_second(
    tmp_path: Path, postgres_url: str, worker_processes: list[WorkerProcess]
) -> None:
    app = perdure.App("crash", database=postgres_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="pipeline")(crashapp.pipeline.fn)
    crash = CrashEnv(tmp_path, app)
    # no PID check and the default 30 s heartbeat: only the session lock can be this fast
    seconds, survivor = await _takeover_seconds(crash, worker_processes, PERDURE_PID_CHECK="0")
    assert seconds < 1.0, f"takeover took {seconds:.2f}s"
    assert "its database session is gone" in survivor.log.read_text()
