"""The Store contract: every backend passes this suite (the PostgreSQL store joins the `store`
fixture's parameters)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from typing import Any

import pytest

from perdure.errors import CorruptJournal, LeaseLost, RunCancelled, RunNotFound, StoreUnavailable
from perdure.ids import new_id
from perdure.records import (
    Attempt,
    Claimed,
    EntryKind,
    EntryStatus,
    ErrorInfo,
    History,
    JournalEntry,
    Lease,
    NewRun,
    RunStatus,
    Transition,
    Value,
    WorkerRecord,
)
from perdure.store.base import Store
from perdure.store.sql import SQLStore
from perdure.store.sqlite import SQLiteStore

APP = "contract"


def _value(data: bytes = b"\x01") -> Value:
    return Value(codec="msgpack", data=data, raw_size=len(data))


def _new_run(task: str = "t", key: str | None = None, at: float | None = None) -> NewRun:
    return NewRun(
        id=new_id(),
        app=APP,
        task=task,
        queue="default",
        args=_value(),
        idempotency_key=key,
        available_at=time.time() if at is None else at,
    )


def _entry(
    seq: int, data: bytes = b"\x02", status: EntryStatus = EntryStatus.COMPLETED
) -> JournalEntry:
    now = time.time()
    return JournalEntry(
        seq=seq,
        kind=EntryKind.STEP,
        name=f"s{seq}",
        status=status,
        value=_value(data) if status is EntryStatus.COMPLETED else None,
        error=ErrorInfo(type="builtins.ValueError", message="x")
        if status is EntryStatus.FAILED
        else None,
        started_at=now,
        finished_at=now,
    )


def encrypted(store: Store) -> bool:
    """True when `store` keeps its inline values encrypted."""
    return isinstance(store, SQLStore) and store.values.keyring is not None


async def register(store: Store, worker_id: str, app: str = APP) -> None:
    """Register `worker_id` as a live worker (claims need one); registering again is a no-op."""
    now = time.time()
    await store.register_worker(
        WorkerRecord(
            id=worker_id,
            app=app,
            host="h",
            host_key="h",
            pid=1,
            pid_started=1,
            started_at=now,
            heartbeat_at=now,
            tasks=["t"],
        )
    )


async def _claim_one(store: Store, worker: str = "w1") -> tuple[str, Lease]:
    await register(store, worker)
    (run,) = await store.claim_runs(app=APP, worker_id=worker, tasks=["t"], limit=1)
    return run.id, run.held


async def test_create_and_idempotency(store: Store) -> None:
    first, created = await store.create_run(_new_run(key="k"))
    again, created_again = await store.create_run(_new_run(key="k"))
    other, _ = await store.create_run(_new_run(key="other"))
    assert created
    assert not created_again
    assert first == again != other
    run = await store.get_run(first)
    assert run.status is RunStatus.QUEUED
    assert run.args is not None
    # encrypted: key id, nonce and tag come on top (8 + 12 + 16 bytes)
    overhead = 36 if encrypted(store) else 0
    assert (run.args.data, run.args.stored_size) == (b"\x01", 1 + overhead)
    with pytest.raises(RunNotFound):
        await store.get_run("missing")


async def test_creating_one_run_makes_no_task_of_its_own(store: Store) -> None:
    """A trigger's write runs in its caller's task: a task of its own (as gathering the one run
    made) costs two more turns of the event loop on every trigger. Several runs' arguments are
    still offloaded side by side."""
    await store.create_run(_new_run())  # (opened: its connections and listeners are made)
    loop = asyncio.get_running_loop()
    made: list[str] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made.append(getattr(coro, "__qualname__", repr(coro)))
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        run_id, created = await store.create_run(_new_run())
    finally:
        loop.set_task_factory(factory)
    assert created
    assert (await store.get_run(run_id)).status is RunStatus.QUEUED
    assert made == []


async def test_creating_runs_together_answers_each_in_order(store: Store) -> None:
    """Runs created together (one round trip of inserts on PostgreSQL) each get their own
    answer, in order: new, an existing run found by its key, with tags, debounced, and large
    arguments (offloaded to the blob store)."""
    taken, _ = await store.create_run(_new_run(key="taken"))
    big = _value(bytes(range(256)) * 8)  # over the store's inline limit (1024)
    runs = [
        _new_run(),
        _new_run(key="taken"),
        replace(_new_run(), tags=["blue", "green"]),
        replace(_new_run(), debounce_key="burst"),
        replace(_new_run(key="fresh"), args=big),
        _new_run(),
    ]
    created = await store.create_runs(runs)
    assert created == [
        (runs[0].id, True),
        (taken, False),
        (runs[2].id, True),
        (runs[3].id, True),
        (runs[4].id, True),
        (runs[5].id, True),
    ]
    assert (await store.get_run(runs[2].id)).tags == ("blue", "green")
    stored = await store.get_run(runs[4].id)
    assert stored.args is not None
    assert (stored.args.data, stored.args.blob_key is not None) == (big.data, True)
    assert len(await store.list_runs(status=RunStatus.QUEUED, limit=100)) == 6


async def test_a_filled_runs_table_gets_statistics_once(store: Store) -> None:
    """PostgreSQL's planner has no statistics of a new table until autovacuum's first ANALYZE;
    the store gives it some once the table holds enough runs (SQLite: never needed)."""
    postgres = not isinstance(store, SQLiteStore)
    if postgres:  # (autovacuum's round must not come in the middle of the test)
        _sql(store, "ALTER TABLE runs SET (autovacuum_enabled = false)", {})
    await store.create_runs([_new_run() for _ in range(999)])
    assert not await store.refresh_statistics()  # too few to matter
    await store.create_run(_new_run())
    assert await store.refresh_statistics() is postgres
    assert not await store.refresh_statistics()  # it has them now
    if postgres:  # the planner knows how many runs there are
        assert isinstance(store, SQLStore)
        rows = await store._one("runs_lack_statistics", {"enough": 1}, "test")
        assert not rows[0]["lacking"]


async def test_claim_respects_tasks_time_and_limit(store: Store) -> None:
    await store.create_run(_new_run(task="other"))
    later, _ = await store.create_run(_new_run(at=time.time() + 60))
    ready = [(await store.create_run(_new_run()))[0] for _ in range(3)]
    claimed = await store.claim_runs(app=APP, worker_id="w1", tasks=["t"], limit=2)
    assert [r.id for r in claimed] == ready[:2]
    assert all(r.status is RunStatus.RUNNING and r.lease == 1 for r in claimed)
    rest = await store.claim_runs(app=APP, worker_id="w2", tasks=["t"], limit=10)
    assert [r.id for r in rest] == ready[2:]
    assert await store.claim_runs(app=APP, worker_id="w2", tasks=["t"], limit=10) == []
    wake = await store.next_wake_at(app=APP, tasks=["t"])
    assert wake is not None
    assert abs(wake - (await store.get_run(later)).created_at - 60) < 1
    # a claim says what its worker would read next: when the next run left may be claimed
    assert (rest.looked, rest.next_at) == (True, wake)
    assert claimed.looked
    assert claimed.next_at is not None
    assert claimed.next_at <= time.time()  # the third ready run was left


def _next(lease: Lease) -> Lease:
    """The lease the run's next claim by the same worker would give."""
    return Lease(lease.number + 1, lease.worker_id)


async def test_append_is_fenced_by_the_lease(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    await store.append(run_id, lease, entries=[_entry(1)], attempts=[])
    with pytest.raises(LeaseLost):
        await store.append(run_id, _next(lease), entries=[_entry(2)], attempts=[])
    with pytest.raises(CorruptJournal):
        await store.append(run_id, lease, entries=[_entry(1, b"other")], attempts=[])
    # the same entry again (a write retried after its answer was lost) is fine, encrypted too
    await store.append(run_id, lease, entries=[_entry(1)], attempts=[])
    journal = await store.load_journal(run_id)
    assert [(e.seq, e.value.data if e.value else None) for e in journal] == [(1, b"\x02")]


async def test_big_values_are_offloaded_and_resolved(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    big = bytes(range(256)) * 64  # 16 KiB > inline limit of 1 KiB
    await store.append(run_id, lease, entries=[_entry(1, big)], attempts=[])
    (entry,) = await store.load_journal(run_id)
    assert entry.value is not None
    assert entry.value.data == big
    assert entry.value.blob_key is not None
    assert entry.value.raw_size == len(big)
    assert 0 < entry.value.stored_size < len(big)


async def test_suspend_then_wake(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    wake_at = time.time() + 0.2
    await store.finish_attempt(
        run_id,
        lease,
        Transition(status=RunStatus.WAITING, available_at=wake_at),
        entries=[_entry(1)],
        attempts=[],
    )
    assert (await store.get_run(run_id)).status is RunStatus.WAITING
    assert await store.claim_runs(app=APP, worker_id="w1", tasks=["t"], limit=1) == []
    await asyncio.sleep(max(0.0, wake_at - time.time()) + 0.01)
    again_id, again_lease = await _claim_one(store)
    assert again_id == run_id
    assert again_lease == _next(lease)
    with pytest.raises(LeaseLost):  # the old lease is dead
        await store.finish_attempt(
            run_id,
            lease,
            Transition(status=RunStatus.COMPLETED, result=_value()),
            entries=[],
            attempts=[],
        )


async def test_task_retry_drops_failed_entries_from_the_first_failure(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    entries = [_entry(1), _entry(2, status=EntryStatus.FAILED), _entry(3)]
    await store.append(run_id, lease, entries=entries, attempts=[])
    error = ErrorInfo(type="builtins.RuntimeError", message="boom")
    attempt = Attempt(
        run_id=run_id,
        run_attempt=1,
        seq=0,
        attempt=1,
        started_at=time.time(),
        finished_at=time.time(),
        error=error,
    )
    await store.finish_attempt(
        run_id,
        lease,
        Transition(
            status=RunStatus.QUEUED,
            available_at=time.time(),
            error=error,
            next_attempt=True,
            attempt=attempt,
        ),
        entries=[],
        attempts=[],
    )
    run = await store.get_run(run_id)
    assert run.attempt == 2
    assert run.status is RunStatus.QUEUED
    assert [e.seq for e in await store.load_journal(run_id)] == [1]
    assert [a.error for a in await store.load_attempts(run_id)] == [error]


async def test_complete_is_recorded_once(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    done = Transition(status=RunStatus.COMPLETED, result=_value(b"\x07"))
    await store.finish_attempt(run_id, lease, done, entries=[], attempts=[])
    with pytest.raises(LeaseLost):
        await store.finish_attempt(run_id, lease, done, entries=[], attempts=[])
    run = await store.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.result is not None
    assert run.result.data == b"\x07"
    assert run.finished_at is not None


async def test_a_claim_hands_over_the_histories_it_read(store: Store) -> None:
    """A run claimed again comes with its journal and attempts (what load_journal and
    load_attempts return); a first claim with an empty history; and when that read fails the
    claim stands without them (the run reads its own), never with an empty one."""
    await store.create_run(_new_run())
    claimed = await store.claim_runs(app=APP, worker_id="w1", tasks=["t"], limit=1)
    (first,) = claimed
    assert first.held == Lease(1, "w1")
    assert claimed.histories[first.id] == History([], [])
    now = time.time()
    tried = Attempt(
        run_id=first.id, run_attempt=1, seq=2, attempt=1, started_at=now, finished_at=now
    )
    await store.append(first.id, first.held, entries=[_entry(1)], attempts=[tried])
    claimed = await _reclaim(store, first.id, first.held)
    recorded = claimed.histories[first.id]
    assert [e.seq for e in recorded.journal] == [1]
    assert [e.seq for e in await store.load_journal(first.id)] == [1]
    assert recorded.attempts == await store.load_attempts(first.id)
    assert [(a.seq, a.attempt) for a in recorded.attempts] == [(2, 1)]

    def broken(run_ids: list[str]) -> Any:
        raise StoreUnavailable("the read failed")

    store._read_histories = broken  # type: ignore[attr-defined]
    claimed = await _reclaim(store, first.id, claimed[0].held)
    assert [run.id for run in claimed] == [first.id]
    assert first.id not in claimed.histories


async def _reclaim(store: Store, run_id: str, lease: Lease) -> Claimed:
    """Release `run_id` and claim it again."""
    now = time.time()
    await store.finish_attempt(
        run_id,
        lease,
        Transition(status=RunStatus.QUEUED, available_at=now),
        entries=[],
        attempts=[],
    )
    claimed = await store.claim_runs(app=APP, worker_id="w1", tasks=["t"], limit=1)
    assert [run.id for run in claimed] == [run_id]
    return claimed


async def test_cancel(store: Store) -> None:
    queued, _ = await store.create_run(_new_run())
    assert await store.cancel_run(queued) is RunStatus.CANCELLED
    await store.create_run(_new_run())
    running, _lease = await _claim_one(store)
    assert await store.cancel_run(running) is RunStatus.RUNNING
    assert await store.cancel_requests("w1") == [(running, 1)]
    assert await store.cancel_run(queued) is RunStatus.CANCELLED
    with pytest.raises(RunNotFound):
        await store.cancel_run("missing")


async def test_reaping_a_worker_requeues_its_runs(store: Store) -> None:
    for worker_id in ("w1", "w2"):
        await register(store, worker_id)  # (the fixture did: registering again is a no-op)
    await store.create_run(_new_run())
    run_id, _ = await _claim_one(store, "w1")
    assert await store.heartbeat("w1")
    assert await store.reap_workers(["w1"], reason="died") == 1
    assert not await store.heartbeat("w1")  # a reaped worker learns it lost its leases
    assert [w.id for w in await store.live_workers(app=APP)] == ["w2"]
    run = await store.get_run(run_id)
    assert run.status is RunStatus.QUEUED
    assert run.note is not None
    assert "died" in run.note
    again_id, lease = await _claim_one(store, "w2")
    assert (again_id, lease) == (run_id, Lease(2, "w2"))


async def test_wait_for_change_wakes_on_a_commit(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for_change(5.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await store.create_run(_new_run())
    assert await waiter
    assert time.monotonic() - started < 5.0
    await asyncio.sleep(0.2)  # let echoes of our own commit arrive (LISTEN/NOTIFY)
    assert not await store.wait_for_change(0.05)


async def test_wait_for_change_ends_when_its_caller_wakes_it(store: Store) -> None:
    """The caller's own future ends the wait (a worker's stop or freed slot), with nothing
    changed; a change resolves that future too."""
    loop = asyncio.get_running_loop()
    wake: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.05, wake.set_result, None)
    await asyncio.wait_for(store.wait_for_change(60.0, topics=["nothing here"], wake=wake), 10.0)
    wake = loop.create_future()
    waiter = asyncio.create_task(store.wait_for_change(60.0, wake=wake))
    await asyncio.sleep(0.05)
    await store.create_run(_new_run())
    assert await asyncio.wait_for(waiter, 10.0)
    assert wake.done()


async def test_reaping_cancels_runs_whose_cancel_was_pending(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, _ = await _claim_one(store, "w1")
    assert await store.cancel_run(run_id) is RunStatus.RUNNING
    assert await store.reap_workers(["w1"], reason="died") == 1
    run = await store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.finished_at is not None


def _sql(store: Store, statement: str, params: dict[str, Any]) -> None:
    """Change the database behind the store's back (what a crash or another process does)."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        with conn:
            conn.execute(statement.replace("%(", ":").replace(")s", ""), params)
        conn.close()
        return
    import psycopg

    url: str = store.db.url  # type: ignore[attr-defined]
    with psycopg.connect(url, options="-c search_path=perdure") as pg:
        pg.execute(statement, params)


async def test_a_claim_lost_in_a_crash_cannot_share_its_lease(store: Store) -> None:
    """A claim committed without waiting for the disk can be lost in a database crash: the run
    is back where it was, and the next claim gives it the same lease number. The worker that
    claimed first still runs it; its writes must be refused, the new claimer's accepted."""
    await store.create_run(_new_run())
    run_id, first = await _claim_one(store, "w1")
    _sql(
        store,
        "UPDATE runs SET status = 'queued', lease = lease - 1, worker_id = NULL WHERE id = %(id)s",
        {"id": run_id},
    )
    again, second = await _claim_one(store, "w2")
    assert again == run_id
    assert second.number == first.number  # the number alone cannot tell the claims apart
    with pytest.raises(LeaseLost):
        await store.append(run_id, first, entries=[_entry(1, b"first")], attempts=[])
    with pytest.raises(LeaseLost):
        await store.finish_attempt(
            run_id,
            first,
            Transition(status=RunStatus.COMPLETED, result=_value(b"first")),
            entries=[],
            attempts=[],
        )
    await store.append(run_id, second, entries=[_entry(1, b"second")], attempts=[])
    await store.finish_attempt(
        run_id,
        second,
        Transition(status=RunStatus.COMPLETED, result=_value(b"second")),
        entries=[],
        attempts=[],
    )
    run = await store.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.result is not None
    assert run.result.data == b"second"
    (entry,) = await store.load_journal(run_id)
    assert entry.value is not None
    assert entry.value.data == b"second"


async def test_no_run_stays_running_without_a_live_worker(store: Store) -> None:
    """A worker declared dead claims nothing; a run left running under a worker that is not
    alive (its claim committed while the worker was being declared dead, or the worker stopped
    without releasing it) is requeued by the next sweep; and a cancel ends it at once."""
    for _ in range(3):
        await store.create_run(_new_run())
    stranded, _ = await _claim_one(store, "w1")
    doomed, _ = await _claim_one(store, "w1")
    _sql(store, "UPDATE workers SET status = 'dead' WHERE id = 'w1'", {})
    assert await store.claim_runs(app=APP, worker_id="w1", tasks=["t"], limit=5) == []
    assert await store.claim_runs(app=APP, worker_id="never-registered", tasks=["t"], limit=5) == []
    assert not await store.heartbeat("w1")
    assert "w1" not in [w.id for w in await store.live_workers(app=APP)]
    assert await store.cancel_run(doomed) is RunStatus.CANCELLED  # no live worker to ask
    assert await store.release_strays("w2", keep=[]) == []  # none of w2's own
    run = await store.get_run(stranded)
    assert run.status is RunStatus.QUEUED
    assert run.note is not None
    assert "w1" in run.note
    assert (await store.get_run(doomed)).status is RunStatus.CANCELLED
    taken = await store.claim_runs(app=APP, worker_id="w2", tasks=["t"], limit=5)
    assert stranded in [r.id for r in taken]
    await store.deregister_worker("w2")  # stopped without releasing what it held
    await register(store, "w3")
    assert await store.reap_workers([], reason="") == len(taken)
    for run in await store.get_runs([r.id for r in taken]):
        assert run.status is RunStatus.QUEUED


async def test_a_finish_never_overwrites_a_requested_cancel(store: Store) -> None:
    """A cancel requested while the worker finishes the run wins: the finish (completion,
    failure, suspension, release) is refused with RunCancelled, nothing of it is written, and
    the worker ends the run as cancelled."""
    outcomes = [
        Transition(status=RunStatus.COMPLETED, result=_value(b"\x07")),
        Transition(status=RunStatus.FAILED, error=ErrorInfo(type="x.E", message="no")),
        Transition(status=RunStatus.WAITING, available_at=time.time() + 60),
        Transition(status=RunStatus.QUEUED, available_at=time.time()),
    ]
    for outcome in outcomes:
        await store.create_run(_new_run())
        run_id, lease = await _claim_one(store)
        assert await store.cancel_run(run_id) is RunStatus.RUNNING  # asked to stop
        with pytest.raises(RunCancelled):
            await store.finish_attempt(run_id, lease, outcome, entries=[_entry(1)], attempts=[])
        assert (await store.get_run(run_id)).status is RunStatus.RUNNING
        assert await store.load_journal(run_id) == []  # nothing of the refused finish
        await store.finish_attempt(
            run_id, lease, Transition(status=RunStatus.CANCELLED), entries=[_entry(1)], attempts=[]
        )
        run = await store.get_run(run_id)
        assert run.status is RunStatus.CANCELLED
        assert run.result is None
        assert [e.seq for e in await store.load_journal(run_id)] == [1]


async def test_a_stray_run_asked_to_cancel_ends_cancelled(store: Store) -> None:
    """A run left running under its (live) worker, which does not run it any more, with a
    cancel pending: the stray sweep ends it cancelled rather than requeueing it to run again."""
    await store.create_run(_new_run())
    run_id, _ = await _claim_one(store, "w1")
    assert await store.cancel_run(run_id) is RunStatus.RUNNING
    assert await store.release_strays("w1", keep=[]) == [run_id]
    run = await store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.finished_at is not None
