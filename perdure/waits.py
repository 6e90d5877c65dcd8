"""Durable waits and recorded values.

`sleep` and `sleep_until` suspend the run: it leaves the worker, frees its slot, and a timer
(the run's available_at) brings it back. `wait_for_token`, `wait_for_event` and `receive` wait
for the outside world the same way: the run registers its wait with the store and suspends
until a completion, an event or a message signals it, or its timeout passes; how the wait ended
is recorded at its journal position, so a replay ends it the same way without asking again.
`now`, `uuid4` and `random` are recorded in the journal, so a replay sees the values the first
execution saw. Outside a run they are the plain functions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from perdure import tracing, values
from perdure.config import env_float
from perdure.context import RunContext, _in_step, current, in_thread_of_loop
from perdure.errors import ContinueAsNew, PerdureError, Suspend, WaitTimeout
from perdure.journal import Journal, error_info
from perdure.records import EntryKind, EntryStatus, JournalEntry, Value
from perdure.wait_records import (
    NewToken,
    Token,
    Wait,
    WaitKind,
    named_token_id,
    token_id_at,
    wait_key,
)

T = TypeVar("T")


class _Done:
    """An awaitable that is already finished, for waits that do not suspend."""

    def __await__(self) -> Any:
        return None
        yield  # pragma: no cover - makes this a generator


def _no_waits_in_steps(what: str) -> None:
    step = _in_step.get()
    if step is not None:
        raise PerdureError(
            f"{what} was called inside step {step.name!r}; durable waits belong in the task body, "
            "between steps"
        )


def sleep(seconds: float) -> Any:
    """Sleep durably: `await perdure.sleep(3600)` (in a sync task, call it without await).

    The run is suspended and holds no worker slot while it sleeps; a crash or restart does not
    shorten or restart the sleep.
    """
    ctx = current()
    if ctx is None:
        return asyncio.sleep(seconds)
    return _sleep(ctx, "perdure.sleep", lambda now: now + max(0.0, seconds))


def sleep_until(when: dt.datetime) -> Any:
    """Sleep durably until `when`, an aware datetime: `await perdure.sleep_until(datetime(2027,
    1, 1, tzinfo=UTC))` (in a sync task, without await). A time in the past returns at once."""
    if not isinstance(when, dt.datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise PerdureError(
            f"perdure.sleep_until needs an aware datetime (with a tzinfo, e.g. "
            f"datetime(..., tzinfo=UTC) or ZoneInfo('Europe/Paris')), got {when!r}"
        )
    ctx = current()
    if ctx is None:
        return asyncio.sleep(max(0.0, when.timestamp() - time.time()))
    return _sleep(ctx, "perdure.sleep_until", lambda now: when.timestamp())


def _sleep(ctx: RunContext, what: str, wake: Callable[[float], float]) -> Any:
    _no_waits_in_steps(what)
    ctx.check_active()
    journal = ctx.journal
    seq = journal.next_seq()
    entry = journal.recorded(seq, EntryKind.SLEEP, "sleep")
    now = ctx.store.now()  # the store's clock: the one the wake-up is kept on
    if entry is not None:
        wake_at = float(journal.decode(entry, float))
        if wake_at > now:
            raise Suspend(wake_at)
    else:
        wake_at = wake(now)
        entry, _data = journal.entry(seq, EntryKind.SLEEP, "sleep", wake_at, now)
        journal.record(entry)  # written with the suspension, in one transaction
        if wake_at > now:
            raise Suspend(wake_at)
    return _Done() if in_thread_of_loop(ctx) else None


# -- waits for the outside world -------------------------------------------------------------

EVENT_LOOKBACK = 60.0
"""Seconds before a wait_for_event began whose events still count (an event sent just before
the run got to its wait is not missed); $PERDURE_EVENT_LOOKBACK."""


def _in_run(what: str) -> RunContext:
    ctx = current()
    if ctx is None:
        raise PerdureError(
            f"{what} is only available inside a run (a task's body); outside one, use the "
            "App (app.create_token, app.complete_token, app.send_event, handle.send)"
        )
    _no_waits_in_steps(what)
    ctx.check_active()
    return ctx


def _on_loop(ctx: RunContext, coro: Coroutine[Any, Any, T]) -> Any:
    """`coro` to await (async task), or its outcome (a sync task's thread)."""
    if in_thread_of_loop(ctx):
        return coro
    return asyncio.run_coroutine_threadsafe(coro, ctx.loop).result()


def _encode(ctx: RunContext, value: Any, what: str) -> Value:
    data = values.encode(value, codec=ctx.task.codec, what=what, max_size=ctx.task.max_value_size)
    return Value(codec=str(ctx.task.codec), data=data, raw_size=len(data))


def create_token(
    *,
    timeout: float | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
) -> Any:
    """Make a token for a person or a system to complete (`app.complete_token(token.id,
    data)`, `perdure tokens complete ID`): `token = await perdure.create_token(timeout=86_400)`,
    then `await perdure.wait_for_token(token)`. A token not completed within `timeout` seconds
    times out. Recorded: a replay gets the same token."""
    ctx = _in_run("perdure.create_token")
    seq = ctx.journal.next_seq()
    entry = ctx.journal.recorded(seq, EntryKind.TOKEN_CREATED, "create_token")
    if entry is not None:
        token = Token(str(ctx.journal.decode(entry, str)))
        return _on_loop(ctx, _ready(token))
    return _on_loop(ctx, _create_token(ctx, seq, timeout, list(tags), idempotency_key))


async def _ready(value: T) -> T:
    return value


async def _create_token(
    ctx: RunContext, seq: int, timeout: float | None, tags: list[str], key: str | None
) -> Token:
    now = ctx.store.now()
    made = await ctx.store.create_token(
        NewToken(
            id=token_id_at(ctx.run.id, seq),
            app=ctx.run.app,
            run_id=ctx.run.id,
            tags=tags,
            idempotency_key=key,
            expires_at=None if timeout is None else now + max(0.0, timeout),
        )
    )
    entry, _data = ctx.journal.entry(seq, EntryKind.TOKEN_CREATED, "create_token", made.id, now)
    ctx.journal.record(entry)
    return Token(made.id)


def wait_for_token(token: Token | str, *, timeout: float | None = None) -> Any:
    """Wait (suspended, holding no slot) until `token` is completed, and return its data.
    `token` is a Token (from create_token), or a name: this run's token of that name, made on
    first use and completed with `handle.complete_token(name, data)` (a completion that comes
    first is kept). WaitTimeout after `timeout` seconds, or at the token's own timeout."""
    ctx = _in_run("perdure.wait_for_token")
    if isinstance(token, Token):
        token_id, name, label = token.id, None, token.id
    elif isinstance(token, str) and token:
        token_id, name, label = named_token_id(ctx.run.id, token), token, token
    else:
        raise PerdureError(f"wait_for_token takes a Token or a token name, got {token!r}")
    named = None
    if name is not None:  # made by its first wait, it lives as long as the wait
        expires = None if timeout is None else ctx.store.now() + max(0.0, timeout)
        named = NewToken(
            id=token_id, app=ctx.run.app, run_id=ctx.run.id, name=name, expires_at=expires
        )
    return _wait(ctx, WaitKind.TOKEN, EntryKind.TOKEN, label, token_id, timeout, token=named)


def wait_for_event(
    name: str,
    *,
    match: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    lookback: float | None = None,
) -> Any:
    """Wait (suspended, holding no slot) for an event `name` sent with `app.send_event` whose
    payload holds every field of `match` with an equal value, and return its payload. Events
    sent up to `lookback` seconds before the wait began count ($PERDURE_EVENT_LOOKBACK, else
    60), but an event ends at most one of a run's waits. WaitTimeout after `timeout` s."""
    ctx = _in_run("perdure.wait_for_event")
    if lookback is None:
        lookback = env_float("PERDURE_EVENT_LOOKBACK", EVENT_LOOKBACK)
    fields = None if not match else _encode(ctx, dict(match), f"match of event {name!r}")
    return _wait(
        ctx, WaitKind.EVENT, EntryKind.EVENT, name, name, timeout, match=fields, lookback=lookback
    )


def receive(topic: str, *, timeout: float | None = None) -> Any:
    """The next message on `topic` of this run's mailbox (sent with `handle.send(topic, data)`),
    waiting for one (suspended, holding no slot) if none is there: FIFO, each message received
    once, also across crashes. WaitTimeout after `timeout` seconds."""
    ctx = _in_run("perdure.receive")
    return _wait(ctx, WaitKind.MESSAGE, EntryKind.MESSAGE, topic, topic, timeout)


def _wait(
    ctx: RunContext,
    kind: WaitKind,
    entry_kind: EntryKind,
    label: str,
    key: str,
    timeout: float | None,
    *,
    match: Value | None = None,
    lookback: float = 0.0,
    token: NewToken | None = None,
) -> Any:
    journal = ctx.journal
    seq = journal.next_seq()
    entry = journal.recorded(seq, entry_kind, label)
    if entry is not None:
        return _on_loop(ctx, _replayed(journal, entry))
    now = ctx.store.now()
    wait = Wait(
        run_id=ctx.run.id,
        seq=seq,
        app=ctx.run.app,
        kind=kind,
        key=key,
        match=match,
        since=now - lookback,
        deadline=None if timeout is None else now + max(0.0, timeout),
        token=token,
    )
    return _on_loop(ctx, _begin(ctx, wait, entry_kind, label, now))


async def _replayed(journal: Journal, entry: JournalEntry) -> Any:
    if entry.status is EntryStatus.FAILED:
        raise WaitTimeout(entry.error.message if entry.error else "the wait timed out")
    return journal.decode(entry, Any)


async def _begin(
    ctx: RunContext, wait: Wait, entry_kind: EntryKind, label: str, started: float
) -> Any:
    state = await ctx.store.begin_wait(wait, ctx.run.held)
    outcome = "suspended" if not state.over else "timed_out" if state.timed_out else "completed"
    tracing.wait(ctx.span, ctx.run.id, str(wait.kind), wait.key, outcome, state.deadline)
    if not state.over:
        raise Suspend(state.deadline, waiting_for=wait_key(wait.kind, wait.key), signalled=True)
    journal = ctx.journal
    if state.timed_out:
        error = WaitTimeout(f"{_describe(wait.kind, label)} timed out")
        journal.failed(wait.seq, entry_kind, label, error_info(error, retryable=False), started)
        raise error
    value = state.value
    assert value is not None
    entry = JournalEntry(
        seq=wait.seq,
        kind=entry_kind,
        name=label,
        status=EntryStatus.COMPLETED,
        value=Value(codec=value.codec, data=value.data, raw_size=len(value.data)),
        started_at=started,
        finished_at=ctx.store.now(),
    )
    journal.record(entry)
    return journal.decode(entry, Any)


def _describe(kind: WaitKind, label: str) -> str:
    if kind is WaitKind.TOKEN:
        return f"the wait for token {label!r}"
    if kind is WaitKind.EVENT:
        return f"the wait for event {label!r}"
    return f"the receive on topic {label!r}"


def _recorded(kind: EntryKind, make: Callable[[], T], type_: Any) -> T:
    ctx: RunContext | None = current()
    if ctx is None or _in_step.get() is not None:
        return make()
    return ctx.journal.replay_or_record(kind, str(kind), make, type_)


def now() -> dt.datetime:
    """The current time (UTC, aware), recorded: a replay returns the first call's value."""
    return _recorded(EntryKind.NOW, lambda: dt.datetime.now(dt.UTC), dt.datetime)


def uuid4() -> _uuid.UUID:
    """A random UUID, recorded: a replay returns the first call's value."""
    return _recorded(EntryKind.UUID, _uuid.uuid4, _uuid.UUID)


def random() -> float:
    """A random float in [0, 1), recorded: a replay returns the first call's value."""
    return _recorded(EntryKind.RANDOM, _random.random, float)


def patched(patch_id: str) -> bool:
    """Whether this run takes the code path of patch `patch_id`: False while replaying a journal
    recorded before the patch, True otherwise (recorded, so the run keeps its answer on every
    replay). One worker version then serves runs started before a change and after it:

        if perdure.patched("send-receipt"):
            await send_receipt(order)

    Outside a run, or inside a step, True."""
    ctx: RunContext | None = current()
    if ctx is None or _in_step.get() is not None:
        return True
    ctx.check_active()
    return ctx.journal.patched(patch_id)


def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End this run and continue as a new run of its task with these arguments, in one atomic
    step: the run completes (without a result, linked to the new one: RunRecord.continued_as)
    and the new run starts with an empty journal. A loop that would run for weeks — a chat
    agent's turns, a poller — keeps its history short, so a resume replays little:

        @app.task
        async def agent(conversation: str, turn: int = 0) -> None:
            ...
            if turn % 100 == 99:
                perdure.continue_as_new(conversation, turn + 1)

    A handle's result() follows the chain to the run that ends it. Only in a task's body (not a
    step), and not in a child run (its parent waits for it, not for the chain)."""
    ctx: RunContext | None = current()
    if ctx is None or _in_step.get() is not None:
        raise PerdureError("perdure.continue_as_new belongs in a task's body (not a step)")
    if ctx.run.parent_id is not None:
        raise PerdureError(
            f"run {ctx.run.id} is a child run: its parent waits for it, so it cannot continue "
            "as a new run; return instead, and let the parent trigger the next one"
        )
    ctx.check_active()
    raise ContinueAsNew(args, kwargs)
