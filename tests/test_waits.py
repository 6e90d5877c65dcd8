"""Waits for the outside world: tokens, events, mailboxes and sleep_until, on both stores."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.errors import (
    PerdureError,
    TokenAlreadyCompleted,
    TokenNotFound,
    WaitTimeout,
)
from perdure.records import EntryKind, RunStatus
from perdure.retention import purge
from perdure.wait_records import TokenStatus

from .conftest import running_worker, wait_until


async def _waiting(handle: perdure.RunHandle[Any]) -> bool:
    return await handle.status() is RunStatus.WAITING


async def test_a_token_wait_suspends_and_its_completion_resumes_the_run_once(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    ran: list[str] = []

    @app.step
    async def note(what: str) -> str:
        ran.append(what)
        return what

    @app.task
    async def approve(order: int) -> dict[str, Any]:
        await note("asked")
        token = await perdure.create_token(timeout=3600, tags=["refund"])
        await note(token.id)
        decision = await perdure.wait_for_token(token)
        await note("decided")
        return {"order": order, "decision": decision}

    async with running_worker(app, concurrency=2):
        handle = await approve.trigger(7)
        await wait_until(lambda: _waiting(handle))
        token_id = ran[1]
        token = await app.get_token(token_id)
        assert token.status is TokenStatus.WAITING
        assert token.run_id == handle.id
        assert token.tags == ["refund"]
        assert [t.id for t in await app.store.list_tokens(app=app.name)] == [token_id]
        await app.complete_token(token_id, {"ok": True})
        assert await handle.result(timeout=10) == {"order": 7, "decision": {"ok": True}}
        with pytest.raises(TokenAlreadyCompleted):
            await app.complete_token(token_id, {"ok": False})
        with pytest.raises(TokenNotFound):
            await app.complete_token("no-such-token", 1)
    assert ran == ["asked", token_id, "decided"]  # nothing ran twice across the suspension
    done = await app.get_token(token_id)
    assert done.status is TokenStatus.COMPLETED
    await app.close()


async def test_a_named_token_completed_before_the_wait_is_not_lost(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    go = asyncio.Event()

    @app.step
    async def gate() -> None:
        await go.wait()

    @app.task
    async def flow() -> Any:
        await gate()
        return await perdure.wait_for_token("approval", timeout=60)

    async with running_worker(app):
        handle = await flow.trigger()
        await handle.complete_token("approval", {"by": "ana"})  # before the run asks
        with pytest.raises(TokenAlreadyCompleted):
            await handle.complete_token("approval", {"by": "bob"})
        go.set()
        assert await handle.result(timeout=10) == {"by": "ana"}
    await app.close()


async def test_a_token_wait_times_out_with_wait_timeout_that_a_replay_raises_again(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    seen: list[str] = []

    @app.step
    async def record(what: str) -> str:
        seen.append(what)
        return what

    @app.task
    async def flow() -> str:
        try:
            await perdure.wait_for_token("never", timeout=0.3)
        except WaitTimeout as exc:
            await record(f"timeout: {exc}")
        await perdure.sleep(0.2)  # suspends: the rest runs on a replay
        return await record("after")

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == "after"
    assert len(seen) == 2  # the replay raised the recorded timeout, it did not wait again
    assert seen[0].startswith("timeout: the wait for token 'never' timed out")
    journal = await app.store.load_journal(handle.id)
    assert [e.kind for e in journal][:2] == [EntryKind.TOKEN, EntryKind.STEP]
    with pytest.raises(TokenAlreadyCompleted, match="timed out"):
        await handle.complete_token("never", 1)
    await app.close()


async def test_a_token_made_outside_a_run_and_its_own_timeout(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def wait_on(token: perdure.Token) -> Any:
        try:
            return await perdure.wait_for_token(token)
        except WaitTimeout:
            return "timed out"

    async with running_worker(app):
        token = await app.create_token(timeout=60, idempotency_key="k1")
        assert (await app.create_token(idempotency_key="k1")).id == token.id
        first = await wait_on.trigger(token)
        second = await wait_on.trigger(token)  # two runs wait on one token: both wake
        await wait_until(lambda: _waiting(first))
        await wait_until(lambda: _waiting(second))
        await app.complete_token(token, [1, 2])
        assert await first.result(timeout=10) == [1, 2]
        assert await second.result(timeout=10) == [1, 2]

        short = await app.create_token(timeout=0.3)
        late = await wait_on.trigger(short)
        assert await late.result(timeout=10) == "timed out"
        assert (await app.get_token(short.id)).status is TokenStatus.TIMED_OUT
        with pytest.raises(TokenAlreadyCompleted, match="timed out"):
            await app.complete_token(short, 1)
    await app.close()


async def test_events_wake_matching_waiters_and_trigger_tasks(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    triggered: list[Any] = []

    @app.task
    async def paid(order: int) -> Any:
        return await perdure.wait_for_event("order.paid", match={"order_id": order}, timeout=60)

    @app.task(on_event="order.paid")
    async def on_paid(payload: dict[str, Any]) -> None:
        triggered.append(payload)

    async with running_worker(app, concurrency=4):
        seven, eight = await paid.trigger(7), await paid.trigger(8)
        await wait_until(lambda: _waiting(seven))
        await wait_until(lambda: _waiting(eight))
        sent = await app.send_event(
            "order.paid", {"order_id": 7, "amount": 12}, idempotency_key="e1"
        )
        assert sent.created
        assert sent.woken == [seven.id]
        assert await seven.result(timeout=10) == {"order_id": 7, "amount": 12}
        again = await app.send_event("order.paid", {"order_id": 8}, idempotency_key="e1")
        assert again.id == sent.id
        assert not again.created  # the same key: nothing woken, nothing triggered again
        assert await eight.status() is RunStatus.WAITING
        await app.send_event("order.paid", {"order_id": 8})
        assert await eight.result(timeout=10) == {"order_id": 8}
        await wait_until(lambda: len(triggered) == 2)
    assert sorted(p["order_id"] for p in triggered) == [7, 8]
    listed = await app.store.list_events(app=app.name)
    assert [e.name for e in listed] == ["order.paid", "order.paid"]
    await app.close()


async def test_an_event_sent_just_before_the_wait_is_seen_once(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def twice() -> list[Any]:
        first = await perdure.wait_for_event("ping", timeout=60)
        try:
            second = await perdure.wait_for_event("ping", timeout=0.3)
        except WaitTimeout:
            second = "timed out"
        return [first, second]

    async with running_worker(app):
        await app.send_event("ping", {"n": 1})  # before the run exists: the look-back sees it
        handle = await twice.trigger()
        assert await handle.result(timeout=10) == [{"n": 1}, "timed out"]
    await app.close()


async def test_a_mailbox_is_fifo_per_topic_and_keeps_messages_sent_before_the_receive(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def chat(turns: int) -> list[Any]:
        said = []
        for _ in range(turns):
            said.append(await perdure.receive("chat", timeout=60))
        said.append(await perdure.receive("other", timeout=60))
        return said

    async with running_worker(app):
        handle = await chat.trigger(3)
        await handle.send("chat", "a")
        await handle.send("other", "x")
        await handle.send("chat", "b", idempotency_key="m2")
        assert await handle.send("chat", "b again", idempotency_key="m2")  # the first stands
        await wait_until(lambda: _waiting(handle))
        await handle.send("chat", "c")
        assert await handle.result(timeout=10) == ["a", "b", "c", "x"]
        with pytest.raises(PerdureError, match="has ended"):
            await handle.send("chat", "late")
    await app.close()


async def test_sleep_until_takes_aware_datetimes_only(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def later(seconds: float) -> str:
        await perdure.sleep_until(perdure.now() + dt.timedelta(seconds=seconds))
        return "woke"

    with pytest.raises(PerdureError, match="aware datetime"):
        perdure.sleep_until(dt.datetime(2030, 1, 1))
    async with running_worker(app):
        handle = await later.trigger(0.3)
        await wait_until(lambda: _waiting(handle))
        assert await handle.result(timeout=10) == "woke"
    await app.close()


async def test_waits_belong_in_a_run(make_app: Callable[..., perdure.App]) -> None:
    with pytest.raises(PerdureError, match="only available inside a run"):
        perdure.wait_for_token("x")
    with pytest.raises(PerdureError, match="only available inside a run"):
        perdure.receive("x")


async def test_purge_takes_a_runs_tokens_messages_and_waits_and_old_events(
    make_app: Callable[..., perdure.App], tmp_path: Path
) -> None:
    app = make_app(inline_limit=64)

    @app.task
    async def flow() -> list[Any]:
        token = await perdure.wait_for_token("ok")
        message = await perdure.receive("m")
        event = await perdure.wait_for_event("e", match={"n": 1})
        return [token, message, event]

    async with running_worker(app):
        handle = await flow.trigger()
        await handle.complete_token("ok", "x" * 200)  # (over the inline limit: blobs)
        await handle.send("m", "y" * 200)
        await app.send_event("e", {"n": 1, "pad": "z" * 200})
        assert (await handle.result(timeout=10))[0] == "x" * 200
        kept = await flow.trigger()  # still waiting: nothing of it may go
        await kept.complete_token("ok", 1)
        await wait_until(lambda: _waiting(kept))
    assert len(await app.store.run_waits(handle.id)) == 3
    blobs = tmp_path / "blobs"
    then = time.time() - 7200  # every blob old enough to go once nothing references it
    for path in (p for p in blobs.rglob("*") if p.is_file()):
        os.utime(path, (then, then))
    report = await purge(app.store, app.store.blobs, older_than=0)
    assert report.runs == 1
    # the token's data, the message, the event's payload (each also the value its wait
    # recorded: one content-addressed blob) and the run's result
    assert report.blobs == 4
    assert not [p for p in blobs.rglob("*") if p.is_file()]
    assert await app.store.run_waits(handle.id) == []
    assert await app.store.list_tokens(app=app.name, run_id=handle.id) == []
    assert await app.store.list_events(app=app.name) == []
    assert len(await app.store.run_waits(kept.id)) == 2
    assert len(await app.store.list_tokens(app=app.name, run_id=kept.id)) == 1
    await app.close()


async def test_a_sync_task_waits_without_await(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    def sync_flow() -> list[Any]:
        token = perdure.wait_for_token("ok", timeout=60)
        message = perdure.receive("m", timeout=60)
        perdure.sleep_until(perdure.now())  # (in the past by now: returns at once)
        return [token, message]

    async with running_worker(app):
        handle = await sync_flow.trigger()
        await wait_until(lambda: _waiting(handle))
        await handle.complete_token("ok", 1)
        await handle.send("m", 2)
        assert await handle.result(timeout=10) == [1, 2]
    await app.close()
