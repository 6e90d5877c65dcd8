"""The records of waits on the outside world: tokens, events, messages, the waits runs register
for them and how a wait stands (see docs/waits.md). Like perdure.records, every layer speaks
them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from perdure.records import Value


class WaitKind(StrEnum):
    """What a run waits for from outside, and the first part of its signal key."""

    TOKEN = "token"
    """A token's completion (by id)."""
    EVENT = "event"
    """An event sent to the app (by name, matched by fields)."""
    MESSAGE = "message"
    """A message in the run's mailbox (by topic)."""


def wait_key(kind: WaitKind, key: str) -> str:
    """The signal key of a wait: what a WAITING run's `waiting_for` holds, and what a
    completion, an event or a message names to wake it."""
    return f"{kind}:{key}"


@dataclass(frozen=True, slots=True)
class Token:
    """A token a person or a system completes to end a run's wait_for_token."""

    id: str
    """Token id: complete it with app.complete_token(id, data), `perdure tokens complete`."""
    url: str | None = None
    """The server's completion endpoint for it, when the app knows its server's URL."""


def named_token_id(run_id: str, name: str) -> str:
    """The id of a run's token named `name` (wait_for_token("approval")): the same for the
    run's wait and for a completion by name that comes before it."""
    return "tok" + hashlib.sha256(f"{run_id}\0{name}".encode()).hexdigest()[:29]


def token_id_at(run_id: str, seq: int) -> str:
    """The id of the token a run makes at journal position `seq` (the same on every replay)."""
    return named_token_id(run_id, f"#{seq}")


class TokenStatus(StrEnum):
    """Where a token is in its life."""

    WAITING = "waiting"
    """Not completed yet."""
    COMPLETED = "completed"
    """Completed with data (the first completion stands)."""
    TIMED_OUT = "timed_out"
    """Not completed before its timeout; it can no longer be."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewToken:
    """A token to create."""

    id: str
    """Token id."""
    app: str
    """App name."""
    run_id: str | None = None
    """The run that made it (None: made outside a run)."""
    name: str | None = None
    """A run's named token: unique within the run."""
    tags: list[str] = field(default_factory=list)
    """Tags, to find it by."""
    idempotency_key: str | None = None
    """A second create with the same (app, key) returns the first token."""
    expires_at: float | None = None
    """Not completed by then: timed out (None: never)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """A token as stored."""

    id: str
    """Token id."""
    app: str
    """App name."""
    run_id: str | None
    """The run that made it."""
    name: str | None
    """Its name within its run, if named."""
    status: TokenStatus
    """Waiting, completed or timed out (a waiting token past expires_at is timed out)."""
    data: Value | None
    """The completion data."""
    tags: list[str]
    """Tags."""
    idempotency_key: str | None
    """Idempotency key given at creation."""
    created_at: float
    """Creation time."""
    expires_at: float | None
    """Timeout."""
    completed_at: float | None
    """When it was completed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event to send."""

    id: str
    """Event id (sorts by time)."""
    app: str
    """App name."""
    name: str
    """Event name ("order.paid")."""
    payload: Value
    """Encoded payload (a mapping, for matching)."""
    idempotency_key: str | None = None
    """A second send with the same (app, name, key) is the first event again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """An event as stored."""

    id: str
    """Event id."""
    app: str
    """App name."""
    name: str
    """Event name."""
    payload: Value | None
    """Encoded payload (None in listings that do not load it)."""
    idempotency_key: str | None
    """Idempotency key."""
    created_at: float
    """When it was sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """What sending an event did."""

    id: str
    """The event's id (the first event's, for a repeated idempotency key)."""
    created: bool
    """False when the idempotency key had been sent before: nothing happened again."""
    woken: list[str]
    """Runs waiting for it whose match it fits, woken."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    """A message to put in a run's mailbox."""

    id: str
    """Message id (sorts by time: a topic is FIFO by id)."""
    app: str
    """App name."""
    run_id: str
    """The run it goes to."""
    topic: str
    """Topic within the run's mailbox."""
    data: Value
    """Encoded data."""
    idempotency_key: str | None = None
    """A second send with the same (run, key) is the first message again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    """A wait a run registers at a journal position: for a token, an event or a message."""

    run_id: str
    """The waiting run."""
    seq: int
    """The wait's journal position (one registration per position, kept across replays)."""
    app: str
    """App name."""
    kind: WaitKind
    """What it waits for."""
    key: str
    """Token id, event name or topic."""
    match: Value | None = None
    """An event wait's match: an encoded mapping of fields the payload must hold."""
    since: float
    """Events sent from then on count (the look-back window included)."""
    deadline: float | None = None
    """When the wait times out (None: never). The first registration's stands."""
    token: NewToken | None = None
    """A named token to make if the run has not made it yet (wait_for_token("approval"))."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitState:
    """Where a registered wait stands."""

    over: bool
    """True when it ended: with `value`, or timed out."""
    value: Value | None = None
    """What ended it (completion data, event payload, message data)."""
    timed_out: bool = False
    """It ended at its deadline without a value."""
    deadline: float | None = None
    """When it times out (the first registration's)."""
    since: float = 0.0
    """When it began (events: look-back included)."""
    source: str | None = None
    """The token, event or message that ended it."""
