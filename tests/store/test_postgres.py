"""What only the PostgreSQL store does: group commit of step records, LISTEN/NOTIFY wake-ups
across processes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from perdure.blobs import LocalBlobStore
from perdure.errors import CorruptJournal, LeaseLost
from perdure.records import Attempt, RunStatus, Transition
from perdure.store.pg_fast import PostgresFastPaths
from perdure.store.postgres import PostgresStore

from ..conftest import ROOT
from .test_contract import _claim_one, _entry, _new_run, _next, _value


def _fast(store: PostgresStore) -> PostgresFastPaths:
    fast = store.db.fast
    assert fast is not None
    return fast


async def test_concurrent_step_records_share_a_commit(tmp_path: Path, postgres_url: str) -> None:
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    leases = []
    for _ in range(20):
        await store.create_run(_new_run())
        leases.append(await _claim_one(store))
    await asyncio.gather(
        *(store.append(run_id, lease, entries=[_entry(1)], attempts=[]) for run_id, lease in leases)
    )
    assert _fast(store).grouped_appends == 20
    assert _fast(store).append_groups < 20  # several runs' records per transaction
    for run_id, _lease in leases:
        assert [e.seq for e in await store.load_journal(run_id)] == [1]
    await store.close()


async def test_the_fast_step_record_tells_inserted_from_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    """The fast path says, alone and in a group, whether it inserted the record: refused for a
    stale lease and for a taken position (the shared operation then says why)."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    fast = _fast(store)
    leases = []
    for _ in range(3):
        await store.create_run(_new_run())
        leases.append(await _claim_one(store))

    async def params(run_id: str, number: int, seq: int) -> dict[str, Any]:
        (entry,) = await store._entry_params(run_id, [_entry(seq)])
        return {**entry, "lease": number, "worker_id": "w1"}

    (held, lease), (stale, stale_lease), (taken, taken_lease) = leases
    assert await fast.append_one(await params(held, lease.number, 1))  # alone
    assert not await fast.append_one(await params(held, lease.number, 1))  # taken
    assert not await fast.append_one(await params(stale, stale_lease.number + 1, 1))  # stale
    grouped = await asyncio.gather(
        fast.append_one(await params(held, lease.number, 2)),
        fast.append_one(await params(stale, stale_lease.number + 1, 1)),
        fast.append_one(await params(taken, taken_lease.number, 1)),
        fast.append_one(await params(held, lease.number, 1)),
    )
    assert list(grouped) == [True, False, True, False]
    assert fast.append_groups < fast.grouped_appends  # (the four went together)
    assert [e.seq for e in await store.load_journal(held)] == [1, 2]
    assert await store.load_journal(stale) == []
    await store.close()


async def test_concurrent_completions_share_a_statement(tmp_path: Path, postgres_url: str) -> None:
    """Completions submitted together go as one statement, and each keeps its own outcome:
    finished with its entries and attempts, suspended, a stale lease (LeaseLost), or an entry
    colliding with a recorded one (CorruptJournal) — the last two do not fail the others."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    leases = []
    for _ in range(8):
        await store.create_run(_new_run())
        leases.append(await _claim_one(store))
    (stale, stale_lease), (collide, collide_lease), (sleeper, sleeper_lease) = leases[:3]
    await store.append(collide, collide_lease, entries=[_entry(1)], attempts=[])
    now = time.time()
    done = [
        store.finish_attempt(
            run_id,
            lease,
            Transition(status=RunStatus.COMPLETED, result=_value(bytes([i]))),
            entries=[_entry(1), _entry(2)] if i % 2 else [_entry(1)],
            attempts=[
                Attempt(
                    run_id=run_id, run_attempt=1, seq=1, attempt=1, started_at=now, finished_at=now
                )
            ],
        )
        for i, (run_id, lease) in enumerate(leases[3:])
    ]
    outcomes = await asyncio.gather(
        *done,
        store.finish_attempt(
            stale,
            _next(stale_lease),
            Transition(status=RunStatus.COMPLETED),
            entries=[],
            attempts=[],
        ),
        store.finish_attempt(
            collide,
            collide_lease,
            Transition(status=RunStatus.COMPLETED, result=_value()),
            entries=[_entry(1, b"\x09")],
            attempts=[],
        ),
        store.finish_attempt(
            sleeper,
            sleeper_lease,
            Transition(status=RunStatus.WAITING, available_at=now + 60),
            entries=[_entry(1)],
            attempts=[],
        ),
        return_exceptions=True,
    )
    assert outcomes[:5] == [None] * 5
    assert isinstance(outcomes[5], LeaseLost)
    assert isinstance(outcomes[6], CorruptJournal)
    assert outcomes[7] is None
    assert (
        _fast(store).finish_groups < _fast(store).grouped_finishes
    )  # several completions per statement
    for i, (run_id, _lease) in enumerate(leases[3:]):
        run = await store.get_run(run_id)
        assert run.status is RunStatus.COMPLETED
        assert run.result is not None
        assert run.result.data == bytes([i])
        assert [e.seq for e in await store.load_journal(run_id)] == ([1, 2] if i % 2 else [1])
        assert [(a.seq, a.attempt) for a in await store.load_attempts(run_id)] == [(1, 1)]
    assert (await store.get_run(stale)).status is RunStatus.RUNNING
    assert (await store.get_run(collide)).status is RunStatus.RUNNING
    slept = await store.get_run(sleeper)
    assert slept.status is RunStatus.WAITING
    assert slept.available_at == now + 60
    assert [e.seq for e in await store.load_journal(sleeper)] == [1]
    await store.close()


async def test_a_parent_suspending_beside_its_last_child_ending_is_woken(
    tmp_path: Path, postgres_url: str
) -> None:
    """The parent's suspension and its last awaited child's end in one grouped statement: the
    database trigger counts the child after the parent's update, so the parent is woken."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    await store.create_run(_new_run())
    parent, parent_lease = await _claim_one(store)
    child = _new_run()
    await store.create_run(replace(child, parent_id=parent, awaited=True))
    _child, child_lease = await _claim_one(store)
    await asyncio.gather(
        store.finish_attempt(
            parent,
            parent_lease,
            Transition(status=RunStatus.WAITING, children_target=1),
            entries=[],
            attempts=[],
        ),
        store.finish_attempt(
            child.id,
            child_lease,
            Transition(status=RunStatus.COMPLETED, result=_value(), wakes=True),
            entries=[],
            attempts=[],
        ),
    )
    assert _fast(store).finish_groups == 1
    assert _fast(store).grouped_finishes == 2
    woken = await store.get_run(parent)
    assert woken.status is RunStatus.WAITING
    assert woken.available_at is not None
    assert woken.available_at <= time.time()
    assert await _claim_one(store) == (parent, _next(parent_lease))
    await store.close()


async def test_a_trigger_from_another_process_wakes_a_waiter(
    tmp_path: Path, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    await store.wait_for_change(0.2)  # starts the LISTEN connection
    await asyncio.sleep(0.3)  # and lets its first (catch-all) wake-up pass
    script = (
        "import asyncio, time\n"
        "from perdure.blobs import LocalBlobStore\n"
        "from perdure.store.postgres import PostgresStore\n"
        "from tests.store.test_contract import _new_run\n"
        "async def main():\n"
        f"    s = PostgresStore({postgres_url!r}, blobs=LocalBlobStore('b'), inline_limit=1024)\n"
        "    before = time.time()\n"
        "    await s.create_run(_new_run())\n"
        "    print(before, flush=True)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=subprocess.PIPE
    )
    changed = await store.wait_for_change(30.0, topics=["claimable"])
    noticed = time.time()
    stdout, _ = await proc.communicate()
    triggered = float(stdout.decode().split()[0])
    assert changed
    assert triggered <= noticed < triggered + 1.0  # woken by that commit: pushed, not polled
    await store.close()


async def test_a_cancel_beside_a_suspension_is_not_lost(tmp_path: Path, postgres_url: str) -> None:
    """A run that suspends (running → waiting) while a cancel is being requested ends cancelled:
    the cancel waits for the suspension's commit and then sees the run waiting, instead of
    asking a running run to stop that is no longer running."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    await store.create_run(_new_run())
    run_id, _lease = await _claim_one(store)
    async with await psycopg.AsyncConnection.connect(postgres_url) as other:
        # the suspension, committed only after the cancel has started
        await other.execute(
            "UPDATE perdure.runs SET status = 'waiting', worker_id = NULL WHERE id = %s", (run_id,)
        )
        cancel = asyncio.ensure_future(store.cancel_run(run_id))
        await asyncio.sleep(0.5)
        await other.commit()
        assert await cancel is RunStatus.CANCELLED
    assert (await store.get_run(run_id)).status is RunStatus.CANCELLED
    await store.close()


async def test_a_write_chosen_as_a_deadlock_victim_goes_again(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two writers locking two rows in opposite orders: the server aborts the one that waited
    first (the store's); its transaction, rolled back whole, runs again and succeeds."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    first, second = _new_run(), _new_run()
    await store.create_run(first)
    await store.create_run(second)
    touch = "UPDATE perdure.runs SET priority = priority + 1 WHERE id = %(id)s"
    tries = 0
    async with await psycopg.AsyncConnection.connect(postgres_url) as other:
        await other.execute(touch, {"id": second.id})  # holds `second`

        async def work(conn: Any, _pipeline: Any) -> None:
            nonlocal tries
            tries += 1
            await conn.execute(touch, {"id": first.id})
            await conn.execute(touch, {"id": second.id})  # waits for `other`

        write = asyncio.ensure_future(store.db._write("deadlock test", work))
        await asyncio.sleep(0.3)
        await other.execute(touch, {"id": first.id})  # waits for the store: a deadlock
        await other.commit()
        await write
    assert tries == 2
    assert (await store.get_run(first.id)).priority == 2
    assert (await store.get_run(second.id)).priority == 2
    await store.close()


async def test_a_write_cancelled_midway_leaves_its_connection_fit_for_the_next(
    tmp_path: Path, postgres_url: str
) -> None:
    """A run cancelled while its body writes (a trigger in flight) cancels that write at one
    of its awaits, maybe while its pipeline syncs. Its connection must not go back to the pool
    in pipeline mode: the next read's query would only be queued, and read no rows (a run that
    exists, "not found"). One connection, cancelled at each await in turn."""
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), pool_size=1)
    await store.open()
    kept, _created = await store.create_run(_new_run())
    for turns in range(40):
        write = asyncio.create_task(store.create_runs([_new_run(), _new_run()]))
        for _ in range(turns):
            await asyncio.sleep(0)
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        assert (await store.get_run(kept)).id == kept, turns
    await store.close()
