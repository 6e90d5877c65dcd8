"""Runs: idempotency keys, cancellation, serialisation errors, secrets, big values, bad input."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import ipaddress
import pathlib
import pickle
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest

import perdure
from perdure.errors import (
    InvalidArguments,
    PayloadTooLarge,
    RunCancelled,
    RunNotFound,
    RunTimeout,
    SecretLeakError,
    TaskFailed,
    TaskNotFound,
)
from perdure.records import EntryStatus, RunStatus

from .conftest import running_worker, stored_bytes, wait_until


async def test_idempotency_key_returns_the_same_run(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    calls: list[int] = []

    @app.task
    async def charge(amount: int) -> int:
        calls.append(amount)
        return amount

    first = await charge.trigger(10, idempotency_key="order-42")
    second = await charge.trigger(10, idempotency_key="order-42")
    other = await charge.trigger(10, idempotency_key="order-43")
    assert first.id == second.id != other.id
    async with running_worker(app):
        assert await second.result(timeout=10) == 10
        assert await other.result(timeout=10) == 10
    assert calls == [10, 10]
    assert len(await app.store.list_runs()) == 2


async def test_cancel_a_queued_run(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def never() -> None:
        raise AssertionError("a cancelled run must not start")

    handle = await never.trigger()
    assert await handle.cancel() is RunStatus.CANCELLED
    async with running_worker(app):
        with pytest.raises(RunCancelled):
            await handle.result(timeout=5)


async def test_cancel_a_running_run_stops_it_at_its_next_await(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    started = asyncio.Event()
    after: list[str] = []

    @app.step
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    @app.step
    async def later() -> None:
        after.append("ran")

    @app.task
    async def flow() -> None:
        try:
            await slow()
        except Exception:  # a user's broad except cannot swallow the cancellation
            after.append("swallowed")
        await later()

    async with running_worker(app):
        handle = await flow.trigger()
        await asyncio.wait_for(started.wait(), 10)
        assert await handle.cancel() is RunStatus.RUNNING
        with pytest.raises(RunCancelled):
            await handle.result(timeout=10)
    assert after == []


async def test_a_cancel_before_the_body_starts_ends_the_run_at_once(
    make_app: Callable[..., perdure.App],
) -> None:
    """A cancel that reaches the worker while a claimed run is being set up (its history read,
    its start hooks run) ends it as soon as the setup is over, its body never entered; it is
    not left running until the worker's housekeeping (every 5 s) finds it."""
    app = make_app()
    in_hook, go_on = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    @app.task
    async def job() -> None:
        seen.append("body")

    @job.on_start
    async def hold(_: perdure.Lifecycle) -> None:
        in_hook.set()
        try:
            await go_on.wait()
        except asyncio.CancelledError:
            seen.append("setup interrupted")
            raise

    async with running_worker(app) as worker:
        handle = await job.trigger()
        await asyncio.wait_for(in_hook.wait(), 10)
        assert await handle.cancel() is RunStatus.RUNNING

        def heard() -> bool:  # the worker has read the request (its run's control says so)
            entry = worker._active.get(handle.id)
            return entry is None or entry[1].stop_reason == "cancel"

        await wait_until(heard)
        go_on.set()
        with pytest.raises(RunCancelled):
            await handle.result(timeout=3)  # (before the worker's housekeeping)
    assert seen == []


async def test_cancel_a_sleeping_run(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def nap() -> str:
        await perdure.sleep(60)
        return "woke"

    async with running_worker(app):
        handle = await nap.trigger()
        await wait_until(lambda: _status_is(handle, RunStatus.WAITING))
        assert await handle.cancel() is RunStatus.CANCELLED
        with pytest.raises(RunCancelled):
            await handle.result(timeout=5)


async def _status_is(handle: perdure.RunHandle[str], status: RunStatus) -> bool:
    return await handle.status() is status


async def test_unserialisable_step_result_fails_the_run_cleanly(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.step(name="first")
    async def first() -> int:
        return 1

    @app.step(name="make_lock", retry=perdure.Retry(max_attempts=5))
    async def make_lock() -> object:
        return asyncio.Lock()

    @app.task(retry=perdure.Retry(max_attempts=5))
    async def flow() -> None:
        await first()
        await make_lock()

    async with running_worker(app):
        handle = await flow.trigger()
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
        journal = await app.store.load_journal(handle.id)
        run = await app.store.get_run(handle.id)
    message = info.value.error_message
    assert "make_lock" in message
    assert "Lock" in message
    assert "serializer='pickle'" in message
    assert run.attempt == 1  # not retried: retrying cannot help
    assert [(e.name, e.status) for e in journal] == [
        ("first", EntryStatus.COMPLETED),
        ("make_lock", EntryStatus.FAILED),
    ]


async def test_pickle_is_used_only_when_the_task_opts_in(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    class Odd:
        def __init__(self, n: int) -> None:
            self.n = n

    @app.step
    async def make(n: int) -> Odd:
        return Odd(n)

    global _Odd
    _Odd = Odd  # picklable by reference
    Odd.__qualname__ = "_Odd"

    @app.task(serializer="pickle")
    async def flow() -> int:
        odd = await make(3)
        return int(odd.n)

    async with running_worker(app):
        assert await (await flow.trigger()).result(timeout=10) == 3


_Odd: object = None


async def test_secret_never_reaches_storage(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    monkeypatch.setenv("PERDURE_TEST_API_KEY", "sk-very-secret-value")

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def leak_object() -> object:
        return perdure.secret("PERDURE_TEST_API_KEY")

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def leak_value() -> str:
        return "token=" + perdure.secret("PERDURE_TEST_API_KEY").reveal()

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def flow(which: str) -> None:
        await (leak_object() if which == "object" else leak_value())

    async with running_worker(app):
        for which in ("object", "value"):
            handle = await flow.trigger(which)
            with pytest.raises(TaskFailed, match="secret"):
                await handle.result(timeout=10)
    stored = stored_bytes(app)
    assert b"step" in stored  # the dump holds the journal (else this check proves nothing)
    assert b"sk-very-secret-value" not in stored
    secret = perdure.secret("PERDURE_TEST_API_KEY")
    with pytest.raises(SecretLeakError):
        pickle.dumps(secret)


async def test_big_values_go_to_the_blob_store(
    make_app: Callable[..., perdure.App], tmp_path: Path
) -> None:
    app = make_app(inline_limit=1024)
    payload = b"perdure " * 100_000  # 800 kB, compresses well

    @app.step
    async def big() -> bytes:
        return payload

    @app.task
    async def flow() -> int:
        data = await big()
        assert isinstance(data, bytes)
        return len(data)

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=10) == len(payload)
        (entry,) = await app.store.load_journal(handle.id)
    assert entry.value is not None
    assert entry.value.blob_key is not None
    assert entry.value.raw_size > len(payload)  # msgpack header included
    assert entry.value.stored_size < entry.value.raw_size // 10  # zstd
    blob_files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(blob_files) == 1
    assert blob_files[0].stat().st_size == entry.value.stored_size


async def test_bad_triggers_are_refused_and_store_nothing(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def greet(name: str, times: int = 1) -> str:
        return name * times

    with pytest.raises(InvalidArguments, match="greet"):
        await greet.trigger("a", 2, 3)  # type: ignore[call-overload]
    with pytest.raises(InvalidArguments, match="unexpected keyword"):
        await greet.trigger("a", nope=1)  # type: ignore[call-overload]
    # types are checked as a worker will decode them: the parameter, the type it expects, and
    # the one it got are named; the error is a TypeError too
    with pytest.raises(InvalidArguments, match="parameter 'times' expects int, got str 'two'"):
        await greet.trigger("a", "two")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="parameter 'name' expects str, got list"):
        await greet.trigger(["a"])  # type: ignore[call-overload]
    with pytest.raises(TaskNotFound, match="did you import"):
        app.get_task("gret")
    with pytest.raises(RunNotFound):
        await app.store.get_run("nope")
    assert await app.store.list_runs() == []
    await app.close()


async def test_unknown_task_stays_queued_with_a_note(make_app: Callable[..., perdure.App]) -> None:
    producer = make_app()

    @producer.task(name="only_elsewhere")
    async def only_elsewhere() -> int:
        return 1

    consumer = make_app()

    @consumer.task(name="something_else")
    async def something_else() -> int:
        return 2

    handle = await only_elsewhere.trigger()
    async with running_worker(consumer):
        await wait_until(lambda: _has_note(producer, handle.id), timeout=10)
        with pytest.raises(RunTimeout):
            await handle.result(timeout=0.2)
    assert await handle.status() is RunStatus.QUEUED
    async with running_worker(producer):
        assert await handle.result(timeout=10) == 1


async def _has_note(app: perdure.App, run_id: str) -> bool:
    run = await app.store.get_run(run_id)
    return (
        run.note is not None and "only_elsewhere" not in run.note and "start a worker" in run.note
    )


async def test_sleep_frees_the_slot(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    events: list[str] = []

    @app.task
    async def napper(name: str) -> str:
        events.append(f"{name} start")
        await perdure.sleep(0.5)
        events.append(f"{name} end")
        return name

    async with running_worker(app, concurrency=1):
        a = await napper.trigger("a")
        b = await napper.trigger("b")
        assert await a.result(timeout=10) == "a"
        assert await b.result(timeout=10) == "b"
    # with one slot, b can only start while a sleeps if the sleep released the slot
    first_end = min(events.index("a end"), events.index("b end"))
    assert events.index("a start") < first_end
    assert events.index("b start") < first_end


async def test_values_over_the_limit_are_refused(make_app: Callable[..., perdure.App]) -> None:
    app = make_app(max_value_size=10_000)

    @app.step(name="small")
    async def small() -> int:
        return 1

    @app.step(name="huge", retry=perdure.Retry(max_attempts=5))
    async def huge() -> bytes:
        return b"x" * 20_000

    @app.task(retry=perdure.Retry(max_attempts=5))
    async def flow(arg: bytes) -> None:
        await small()
        await huge()

    with pytest.raises(PayloadTooLarge, match=r"20,\d\d\d bytes.*10,000 bytes"):
        await flow.trigger(b"y" * 20_000)  # arguments too: refused at trigger
    async with running_worker(app):
        handle = await flow.trigger(b"ok")
        with pytest.raises(TaskFailed) as info:
            await handle.result(timeout=10)
        journal = await app.store.load_journal(handle.id)
        run = await app.store.get_run(handle.id)
    assert info.value.error_type == "perdure.errors.StepFailed"
    assert "PayloadTooLarge" in info.value.error_message
    assert "limit of 10,000 bytes" in info.value.error_message
    assert run.attempt == 1  # not retried
    assert [(e.name, e.status) for e in journal] == [
        ("small", EntryStatus.COMPLETED),
        ("huge", EntryStatus.FAILED),
    ]


async def test_secret_in_an_error_or_a_log_line_is_redacted(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from perdure.logs import RedactSecrets

    app = make_app()
    monkeypatch.setenv("PERDURE_TEST_TOKEN", "tok-leaky-value-42")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactSecrets())
    user_log = logging.getLogger("user.code")
    user_log.addHandler(handler)
    user_log.setLevel(logging.INFO)

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def call_api() -> None:
        token = perdure.secret("PERDURE_TEST_TOKEN").reveal()
        user_log.info("calling the API with %s", token)
        raise PermissionError(f"401 for token {token}")

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def flow() -> None:
        await call_api()

    try:
        async with running_worker(app):
            handle = await flow.trigger()
            with pytest.raises(TaskFailed) as info:
                await handle.result(timeout=10)
    finally:
        user_log.removeHandler(handler)
    assert "<secret PERDURE_TEST_TOKEN>" in info.value.error_message
    assert "tok-leaky-value-42" not in info.value.error_message + info.value.traceback
    assert records == ["calling the API with <secret PERDURE_TEST_TOKEN>"]
    stored = stored_bytes(app)
    assert b"401 for token" in stored  # the error was stored...
    assert b"tok-leaky-value-42" not in stored  # ...without the secret


PARIS_WINTER = datetime.timezone(datetime.timedelta(hours=1))


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    city: str
    ip: ipaddress.IPv4Address


class Order(pydantic.BaseModel):
    id: uuid.UUID
    total: decimal.Decimal
    colour: Colour
    page: pydantic.AnyUrl
    path: pathlib.Path
    at: datetime.datetime
    ship_to: Address
    tags: list[str] = []


async def test_pydantic_models_round_trip(make_app: Callable[..., perdure.App]) -> None:
    """A model with the field types an app meets (IP address, URL, path, UUID, Decimal, enum,
    aware datetime, a nested model) comes back equal, and typed, as an argument, as a step's
    result (live and replayed) and as the run's result."""
    app = make_app()
    order = Order(
        id=uuid.uuid4(),
        total=decimal.Decimal("19.90"),
        colour=Colour.BLUE,
        page=pydantic.AnyUrl("https://shop.example/orders/7?x=1"),
        path=pathlib.Path("/srv/orders/7.json"),
        at=datetime.datetime(
            2026, 11, 30, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
        ),
        ship_to=Address(city="Paris", ip=ipaddress.IPv4Address("192.0.2.7")),
        tags=["gift"],
    )
    seen: list[Order] = []

    @app.step
    async def enrich(o: Order) -> Order:
        return o.model_copy(update={"tags": [*o.tags, "checked"]})

    @app.task
    async def process(o: Order) -> Order:
        assert isinstance(o, Order)
        enriched = await enrich(o)
        seen.append(enriched)
        await perdure.sleep(0.05)  # resumes: the step's result is replayed from the journal
        return enriched

    async with running_worker(app):
        result = await (await process.trigger(order)).result(timeout=20)
    expected = order.model_copy(update={"tags": ["gift", "checked"]})
    assert len(seen) == 2  # live, then replayed
    assert all(isinstance(s, Order) and s == expected for s in seen)
    assert isinstance(result, Order)
    assert result == expected
    assert result.at.utcoffset() == datetime.timedelta(hours=1)
    assert isinstance(result.ship_to.ip, ipaddress.IPv4Address)


async def test_a_value_pickle_cannot_store_says_so(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.step(retry=perdure.Retry(max_attempts=1))
    async def make_lock() -> object:
        return {"lock": threading.Lock()}

    @app.task(serializer="pickle", retry=perdure.Retry(max_attempts=1))
    async def flow() -> None:
        await make_lock()

    async with running_worker(app):
        with pytest.raises(TaskFailed) as info:
            await (await flow.trigger()).result(timeout=10)
    message = info.value.error_message
    assert "cannot be pickled" in message
    assert "lock" in message
    assert "serializer='pickle'" not in message  # it is a pickle task already


async def test_a_result_completed_in_this_process_needs_no_read(
    make_app: Callable[..., perdure.App],
) -> None:
    """A run completed by this process's worker is remembered with its result, as stored,
    once the completion is committed: a handle waiting here returns it without reading the run.
    A failure is not remembered."""
    app = make_app()

    @app.task()
    async def seven() -> int:
        return 7

    @app.task(retry=perdure.Retry(max_attempts=1))
    async def broken() -> int:
        raise ValueError("no")

    async with running_worker(app):
        done = await seven.trigger()
        assert await done.result() == 7
        known = app.results.get(done.id)
        stored = (await app.store.get_run(done.id)).result
        assert known is not None
        assert stored is not None
        assert (known.codec, known.data) == (stored.codec, stored.data)
        failed = await broken.trigger()
        with pytest.raises(TaskFailed):
            await failed.result()
        assert app.results.get(failed.id) is None
