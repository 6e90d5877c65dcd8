"""The Store contract, continued: the operations of triggers in bulk, listings, queues, TTLs,
retention, key rotation, notes, the clock and change notification — every backend, through the
`store` fixture (tests/store/conftest.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from perdure.errors import RunNotFound
from perdure.records import QueueConfig, RunStatus, Transition
from perdure.store.base import Store
from perdure.store.notify import CLAIMABLE, run_topic

from .test_contract import APP, _claim_one, _new_run, _value, encrypted


async def test_the_clock_the_schema_and_a_detached_loop(store: Store) -> None:
    """now() is the store's clock (here, every process's host clock or the server's: within
    seconds of this one); the schema is up to date; a loop that detaches can still use it."""
    assert abs(store.now() - time.time()) < 5.0
    assert await store.migrate(dry_run=True) == []
    assert await store.migrate() == []
    run_id, _ = await store.create_run(_new_run())
    await store.detach()
    assert (await store.get_run(run_id)).id == run_id


async def test_create_runs_answers_in_order_in_one_write(store: Store) -> None:
    first = _new_run(key="a")
    runs = [first, _new_run(), dataclasses.replace(_new_run(), idempotency_key="a")]
    created = await store.create_runs(runs)
    assert created == [(first.id, True), (runs[1].id, True), (first.id, False)]
    assert [r.id for r in await store.get_runs([runs[1].id, first.id])] == [runs[1].id, first.id]


async def test_list_runs_newest_first_without_values(store: Store) -> None:
    ids = []
    for task in ("t", "t", "other"):
        run_id, _ = await store.create_run(_new_run(task=task))
        ids.append(run_id)
    listed = await store.list_runs()
    assert [r.id for r in listed] == ids[::-1]
    assert all(r.args is None and r.result is None for r in listed)
    assert [r.id for r in await store.list_runs(task="t", limit=1)] == [ids[1]]
    assert await store.list_runs(status=RunStatus.COMPLETED) == []
    assert {r.id for r in await store.list_runs(status=RunStatus.QUEUED)} == set(ids)


async def test_a_listing_holds_the_text_its_runs_share_once(store: Store) -> None:
    """Runs of one task share one copy of their app, task and queue names in a listing (one
    of 10,000 runs would hold each 10,000 times, each read afresh from its row); tags read as
    a tuple, the empty one when a run has none."""
    for _ in range(3):
        await store.create_run(_new_run(task="nightly"))
    tagged, _ = await store.create_run(
        dataclasses.replace(_new_run(task="nightly"), tags=["a", "b"])
    )
    listed = await store.list_runs()
    for field in ("app", "task", "queue"):
        assert len({id(getattr(r, field)) for r in listed}) == 1, field
    assert [r.tags for r in listed] == [("a", "b"), (), (), ()]
    assert listed[0].id == tagged


async def test_offload_and_referenced_blobs(store: Store) -> None:
    """A value over the inline limit goes to the blob store (the same bytes, with their key);
    a smaller one is left as it is; referenced_blobs names the keys some row still holds."""
    small, big = _value(b"\x01" * 10), _value(bytes(range(256)) * 16)
    assert await store.offload(small) is small
    assert await store.offload(None) is None
    moved = await store.offload(big)
    assert moved is not None
    assert moved.blob_key is not None
    assert moved.data == big.data
    assert await store.referenced_blobs([moved.blob_key]) == set()  # nothing holds it yet
    await store.create_run(dataclasses.replace(_new_run(), args=moved))
    assert await store.referenced_blobs([moved.blob_key, "no-such-key"]) == {moved.blob_key}


async def test_queues_declared_set_and_counted(store: Store) -> None:
    await store.declare_queues(APP, [QueueConfig(name="q", concurrency=2)])
    await store.create_run(dataclasses.replace(_new_run(), queue="q"))
    (stats,) = [q for q in await store.queue_stats(APP) if q.config.name == "q"]
    assert (stats.config.concurrency, stats.overridden, stats.queued) == (2, False, 1)
    config = await store.set_queue(APP, "q", concurrency=5, paused=True)
    assert (config.concurrency, config.paused) == (5, True)
    # set at run time: a declaration in code no longer changes it
    await store.declare_queues(APP, [QueueConfig(name="q", concurrency=2)])
    (stats,) = [q for q in await store.queue_stats(APP) if q.config.name == "q"]
    assert (stats.config.concurrency, stats.config.paused, stats.overridden) == (5, True, True)
    unlimited = await store.set_queue(APP, "q", unlimited=True, paused=False)
    assert (unlimited.concurrency, unlimited.paused) == (None, False)
    assert await store.queue_stats("another-app") == []


async def test_runs_past_their_ttl_expire(store: Store) -> None:
    late = dataclasses.replace(_new_run(), expires_at=time.time() - 1)
    fresh = dataclasses.replace(_new_run(), expires_at=time.time() + 3600)
    await store.create_runs([late, fresh])
    assert await store.expire_runs() == 1
    assert (await store.get_run(late.id)).status is RunStatus.EXPIRED
    assert (await store.get_run(fresh.id)).status is RunStatus.QUEUED
    assert await store.expire_runs() == 0


async def test_purge_deletes_ended_runs_only(store: Store) -> None:
    await store.create_run(_new_run())
    done, lease = await _claim_one(store)
    finish = Transition(status=RunStatus.COMPLETED, result=_value())
    await store.finish_attempt(done, lease, finish, entries=[], attempts=[])
    queued, _ = await store.create_run(_new_run())
    later = store.now() + 1
    assert await store.purge_runs(finished_before=later, statuses=[RunStatus.COMPLETED]) == [done]
    with pytest.raises(RunNotFound):
        await store.get_run(done)
    assert (await store.get_run(queued)).status is RunStatus.QUEUED
    with pytest.raises(ValueError, match="only ended runs"):
        await store.purge_runs(finished_before=later, statuses=[RunStatus.QUEUED])
    await store.reclaim()  # the space back; what is left still reads
    assert (await store.get_run(queued)).status is RunStatus.QUEUED


async def test_purge_dry_run_lists_without_deleting(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    await store.finish_attempt(
        run_id, lease, Transition(status=RunStatus.CANCELLED), entries=[], attempts=[]
    )
    later = store.now() + 1
    statuses = [RunStatus.CANCELLED]
    assert await store.purge_runs(finished_before=later, statuses=statuses, dry_run=True) == [
        run_id
    ]
    assert (await store.get_run(run_id)).status is RunStatus.CANCELLED
    assert await store.purge_runs(finished_before=later, statuses=statuses, app="other") == []


async def test_reencrypt_walks_every_run_and_leaves_current_values(store: Store) -> None:
    """Values already stored as the current key wants are not rewritten; the walk goes run by
    run in id order and ends with None once a walk finds fewer runs than asked (that walk
    takes every value after its start that belongs to no run)."""
    ids = sorted([(await store.create_run(_new_run()))[0] for _ in range(3)])
    assert await store.reencrypt_values(limit=2) == (0, ids[1])
    assert await store.reencrypt_values(after=ids[1], limit=2) == (0, None)
    assert await store.reencrypt_values(after=ids[2]) == (0, None)
    run = await store.get_run(ids[0])
    assert run.args is not None
    assert run.args.data == b"\x01"
    assert run.args.stored_size == (37 if encrypted(store) else 1)


async def test_unclaimable_runs_get_a_note(store: Store) -> None:
    unknown, _ = await store.create_run(_new_run(task="nobody-runs-this"))
    known, _ = await store.create_run(_new_run(task="t"))
    note = "no live worker knows task 'nobody-runs-this'"
    assert await store.note_unclaimable(app=APP, tasks=["t"], note=note) == 1
    assert (await store.get_run(unknown)).note == note
    assert (await store.get_run(known)).note is None


async def test_live_workers_are_not_dead_sessions(store: Store) -> None:
    """Registered workers (w1 and w2, whose sessions this process holds) are never reported
    dead; a store without the capability reports no one."""
    dead = await store.dead_sessions(["w1", "w2"], me="w1")
    assert dead == []
    if not store.session_liveness:
        assert await store.dead_sessions(["never-registered"], me="w1") == []


async def test_changes_are_seen_by_topic(store: Store) -> None:
    since = store.change_token()
    assert not store.changed_since(since)
    run_id, _ = await store.create_run(_new_run())
    assert store.changed_since(since, [CLAIMABLE])
    after = store.change_token()
    await store.cancel_run(run_id)
    assert store.changed_since(after, [run_topic(run_id)])
    assert not store.changed_since(after, [run_topic("another-run")])
