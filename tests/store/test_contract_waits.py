"""The Store contract for waits: tokens, events, mailboxes and the signals that wake a run —
every backend (with PostgreSQL's fast finishes too), through the `store` fixture."""

from __future__ import annotations

import msgspec
import pytest

from perdure.errors import LeaseLost, RunNotFound, TokenAlreadyCompleted, TokenNotFound
from perdure.ids import new_id
from perdure.records import RunStatus, Transition, Value
from perdure.store.base import Store
from perdure.wait_records import (
    NewEvent,
    NewMessage,
    NewToken,
    TokenStatus,
    Wait,
    WaitKind,
    named_token_id,
    wait_key,
)

from .test_contract import APP, _claim_one, _new_run


def _packed(value: object) -> Value:
    data = msgspec.msgpack.encode(value)
    return Value(codec="msgpack", data=data, raw_size=len(data))


def _wait(run_id: str, kind: WaitKind, key: str, *, seq: int = 1, **more: object) -> Wait:
    return Wait(run_id=run_id, seq=seq, app=APP, kind=kind, key=key, since=0.0, **more)  # type: ignore[arg-type]


async def _suspend(store: Store, run_id: str, lease: object, key: str, signals: int) -> None:
    await store.finish_attempt(
        run_id,
        lease,  # type: ignore[arg-type]
        Transition(status=RunStatus.WAITING, waiting_for=key, signals=signals),
        entries=[],
        attempts=[],
    )


async def test_a_signal_sent_while_the_run_ran_makes_its_suspension_claimable_at_once(
    store: Store,
) -> None:
    """The race a wait must not lose: the message arrives after the run looked (nothing) and
    before it suspended; the suspension compares the signals its claim saw."""
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    seen = (await store.get_run(run_id)).signals
    state = await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "chat"), lease)
    assert not state.over
    await store.send_message(
        NewMessage(id=new_id(), app=APP, run_id=run_id, topic="chat", data=_packed("hi"))
    )
    await _suspend(store, run_id, lease, wait_key(WaitKind.MESSAGE, "chat"), seen)
    run = await store.get_run(run_id)
    assert run.status is RunStatus.WAITING
    assert run.available_at is not None  # claimable now, not waiting for a signal already sent
    assert run.available_at <= store.now()


async def test_a_signal_wakes_only_a_run_waiting_for_its_key(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    seen = (await store.get_run(run_id)).signals
    await _suspend(store, run_id, lease, wait_key(WaitKind.MESSAGE, "chat"), seen)
    assert (await store.get_run(run_id)).available_at is None
    other = NewMessage(id=new_id(), app=APP, run_id=run_id, topic="other", data=_packed(1))
    await store.send_message(other)
    assert (await store.get_run(run_id)).available_at is None  # another topic: still asleep
    chat = NewMessage(id=new_id(), app=APP, run_id=run_id, topic="chat", data=_packed(2))
    await store.send_message(chat)
    run = await store.get_run(run_id)
    assert run.available_at is not None
    assert run.waiting_for == "message:chat"
    assert run.signals == seen + 2


async def test_a_message_is_taken_once_for_its_position(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    for n in (1, 2):
        message = NewMessage(
            id=new_id(), app=APP, run_id=run_id, topic="t", data=_packed(n), idempotency_key=f"k{n}"
        )
        await store.send_message(message)
    repeat = NewMessage(
        id=new_id(), app=APP, run_id=run_id, topic="t", data=_packed(9), idempotency_key="k1"
    )
    assert (await store.send_message(repeat))[1] is False
    first = await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "t", seq=1), lease)
    again = await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "t", seq=1), lease)
    second = await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "t", seq=2), lease)
    third = await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "t", seq=3), lease)
    assert [s.value.data if s.value else None for s in (first, again, second)] == [
        _packed(1).data,
        _packed(1).data,  # a replay of position 1 gets its message again, not the next
        _packed(2).data,
    ]
    assert not third.over
    with pytest.raises(RunNotFound):
        await store.send_message(
            NewMessage(id=new_id(), app=APP, run_id="nope", topic="t", data=_packed(1))
        )


async def test_tokens_complete_once_and_a_wait_keeps_its_first_deadline(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    token = await store.create_token(NewToken(id=new_id(), app=APP, tags=["a"]))
    assert token.status is TokenStatus.WAITING
    wait = _wait(run_id, WaitKind.TOKEN, token.id, deadline=store.now() + 60)
    first = await store.begin_wait(wait, lease)
    later = await store.begin_wait(
        _wait(run_id, WaitKind.TOKEN, token.id, deadline=store.now() + 999), lease
    )
    assert not first.over
    assert later.deadline == first.deadline  # the first registration stands
    done = await store.complete_token(app=APP, data=_packed("yes"), token_id=token.id)
    assert done.status is TokenStatus.COMPLETED
    with pytest.raises(TokenAlreadyCompleted):
        await store.complete_token(app=APP, data=_packed("no"), token_id=token.id)
    with pytest.raises(TokenNotFound):
        await store.complete_token(app=APP, data=_packed(1), token_id="missing")
    with pytest.raises(TokenNotFound):
        await store.complete_token(app="other", data=_packed(1), token_id=token.id)
    over = await store.begin_wait(wait, lease)
    assert over.over
    assert over.value is not None
    assert over.value.data == _packed("yes").data
    # a named token completed before its run makes it
    named = await store.complete_token(app=APP, data=_packed(3), run_id=run_id, name="n")
    assert named.id == named_token_id(run_id, "n")
    assert named.status is TokenStatus.COMPLETED
    with pytest.raises(RunNotFound):
        await store.complete_token(app=APP, data=_packed(3), run_id="nope", name="n")


async def test_a_wait_is_fenced_by_the_lease(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    await store.reap_workers([lease.worker_id], reason="test")
    with pytest.raises(LeaseLost):
        await store.begin_wait(_wait(run_id, WaitKind.MESSAGE, "t"), lease)


async def test_events_match_fields_and_end_one_wait_each(store: Store) -> None:
    await store.create_run(_new_run())
    run_id, lease = await _claim_one(store)
    match = _packed({"order": 7})
    sent = await store.send_event(
        NewEvent(id=new_id(), app=APP, name="paid", payload=_packed({"order": 8}))
    )
    assert sent.created
    assert sent.woken == []
    first = await store.begin_wait(_wait(run_id, WaitKind.EVENT, "paid", match=match), lease)
    assert not first.over  # order 8 does not match
    seen = (await store.get_run(run_id)).signals
    await _suspend(store, run_id, lease, wait_key(WaitKind.EVENT, "paid"), seen)
    sent = await store.send_event(
        NewEvent(id=new_id(), app=APP, name="paid", payload=_packed({"order": 7, "x": 1}))
    )
    assert sent.woken == [run_id]
    assert (await store.get_run(run_id)).available_at is not None
    (run,) = await store.claim_runs(app=APP, worker_id=lease.worker_id, tasks=["t"], limit=1)
    lease = run.held
    over = await store.begin_wait(_wait(run_id, WaitKind.EVENT, "paid", match=match), lease)
    assert over.over
    assert over.source == sent.id
    # the next wait of the run does not get the same event again
    nxt = await store.begin_wait(_wait(run_id, WaitKind.EVENT, "paid", seq=2, match=match), lease)
    assert not nxt.over
    newest = (await store.list_events(app=APP, name="paid"))[0]
    assert newest.id == sent.id
