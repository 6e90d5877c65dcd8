"""Durable waits and recorded values.

`sleep` suspends the run: it leaves the worker, frees its slot, and a timer (the run's
available_at) brings it back. `now`, `uuid4` and `random` are recorded in the journal, so a
replay sees the values the first execution saw. Outside a run they are the plain functions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random as _random
import uuid as _uuid
from collections.abc import Callable
from typing import Any, TypeVar

from perdure.context import RunContext, _in_step, current, in_thread_of_loop
from perdure.errors import PerdureError, Suspend
from perdure.records import EntryKind

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
    _no_waits_in_steps("perdure.sleep")
    ctx.check_active()
    journal = ctx.journal
    seq = journal.next_seq()
    entry = journal.recorded(seq, EntryKind.SLEEP, "sleep")
    if entry is not None:
        wake_at = float(journal.decode(entry, float))
        if wake_at > ctx.store.now():  # the store's clock: the one the wake-up is kept on
            raise Suspend(wake_at)
    else:
        wake_at = ctx.store.now() + max(0.0, seconds)
        entry, _data = journal.entry(seq, EntryKind.SLEEP, "sleep", wake_at, ctx.store.now())
        journal.record(entry)  # written with the suspension, in one transaction
        if seconds > 0:
            raise Suspend(wake_at)
    return _Done() if in_thread_of_loop(ctx) else None


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
