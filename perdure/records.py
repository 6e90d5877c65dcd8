"""The domain records every layer speaks: a run and its status, a journal entry, an attempt, a
stored value, a worker, a queue's limits, and how a worker ends its hold on a run.

Times are POSIX seconds (float) on the store's clock (see Store.now). The store keeps these; it
does not own them: the runtime, the worker, the CLI and the server read and build them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    """Waiting for a worker (new, released, or backing off before a task retry)."""
    RUNNING = "running"
    """Leased by a worker that executes it."""
    WAITING = "waiting"
    """Suspended by a durable wait (sleep, child runs, a token, an event, a message); holds no
    worker slot; a timer, its children's ends or what it waits for wake it."""
    COMPLETED = "completed"
    """Finished with a result."""
    FAILED = "failed"
    """Finished with an error after spending its retries."""
    CANCELLED = "cancelled"
    """Stopped by a cancel request (or by its queue's cancel strategy)."""
    EXPIRED = "expired"
    """Not started within its `ttl`; it never ran."""

    @property
    def terminal(self) -> bool:
        """True when the run will never change again."""
        return self in (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
            RunStatus.EXPIRED,
        )


class EntryKind(StrEnum):
    """What a journal entry records. New kinds of waits are new members, not new mechanisms."""

    STEP = "step"
    """A step's result or final error."""
    SLEEP = "sleep"
    """A durable sleep; the value is the wake-up time."""
    NOW = "now"
    """A recorded perdure.now()."""
    UUID = "uuid4"
    """A recorded perdure.uuid4()."""
    RANDOM = "random"
    """A recorded perdure.random()."""
    TRIGGER = "trigger"
    """A run this run triggered; the value is its id."""
    CHILDREN = "children"
    """Runs this run triggered in one call; the value is [ids, awaited]."""
    CHILD_RESULTS = "child_results"
    """How the awaited children ended; the value is one outcome per child, in order."""
    TOKEN_CREATED = "create_token"
    """A token this run made; the value is its id."""
    TOKEN = "token"
    """How a wait for a token ended: the completion data, or WaitTimeout."""
    EVENT = "event"
    """How a wait for an event ended: the event's payload, or WaitTimeout."""
    MESSAGE = "message"
    """How a receive ended: the message's data, or WaitTimeout."""
    PATCH = "patch"
    """A perdure.patched(ID) that took the patched path; its name is the patch's id."""


class EntryStatus(StrEnum):
    """How a journal entry ended."""

    COMPLETED = "completed"
    """It holds a value."""
    FAILED = "failed"
    """It holds an error, replayed as StepFailed."""


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An error as stored: enough to show it and to raise it again on replay."""

    type: str
    """Qualified name of the exception class."""
    message: str
    """str() of the exception."""
    traceback: str = ""
    """The formatted traceback of the attempt that raised it."""
    retryable: bool = True
    """False when retrying cannot help (NonRetryableError, serialisation errors)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """A stored value: inline bytes, or a blob reference that the store resolves on read."""

    codec: str
    """serde.Codec of the bytes."""
    data: bytes
    """The encoded value (already fetched from the blob store when it lived there)."""
    blob_key: str | None = None
    """Content address in the blob store, when the value was offloaded."""
    raw_size: int = 0
    """Encoded size in bytes."""
    stored_size: int = 0
    """Bytes written (compressed blob, or the inline size)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run to create."""

    id: str
    """The new run's id (ids.new_id())."""
    app: str
    """App name; workers only claim runs of their own app."""
    task: str
    """Registered task name."""
    queue: str
    """Queue name."""
    args: Value
    """Encoded [positional, keyword] arguments."""
    idempotency_key: str | None = None
    """A second create with the same (app, task, key) returns the first run."""
    available_at: float
    """Earliest time a worker may start it."""
    priority: int = 0
    """Higher first within its queue."""
    concurrency_key: str | None = None
    """Runs with the same key share the queue's per-key limit."""
    expires_at: float | None = None
    """Not started by then: EXPIRED."""
    debounce_key: str | None = None
    """While a run with this key waits to start, a create with the same key replaces its
    arguments and available_at instead of adding a run."""
    parent_id: str | None = None
    """The run that triggered this one from its body."""
    awaited: bool = False
    """The parent waits for this run's end (counted by children_done)."""
    tags: list[str] = field(default_factory=list)
    """Tags to find it by (runs list --tag)."""
    trace_context: str | None = None
    """The W3C traceparent of the code that triggered it, when it was traced (perdure.tracing):
    every execution of the run is a span of that trace."""
    version: str | None = None
    """The version of the code it is pinned to at trigger (only workers of that version run
    it); None: the first worker to start it pins it to its own (perdure.versions)."""
    replay_of: str | None = None
    """The run this one replays (Admin.replay)."""
    reuse_before: int = 0
    """Journal positions below this one are copied from `replay_of`: their recorded results are
    reused, not made again."""
    children_done: int = 0
    """Awaited child runs counted as ended from the start: those of the reused positions."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on a run, as its claim made it. Every write the worker makes for the run
    carries it, and the store accepts the write only while the run is `running` under both
    parts. The number alone would not do: a claim lost in a database crash (claims are committed
    without waiting for the disk) leaves the run with its old number, and the next claim issues
    the same number again; the worker's id tells the two claims apart."""

    number: int
    """The run's claim counter after this claim."""
    worker_id: str
    """The worker that claimed."""


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A run as stored. (A msgspec Struct, not a dataclass: a listing or a claim makes
    thousands, and a frozen dataclass sets each of its 31 fields through object.__setattr__,
    ~10 µs a record against ~1 µs; `msgspec.structs.replace` makes a changed copy.)"""

    id: str
    """Run id."""
    app: str
    """App name."""
    task: str
    """Task name."""
    queue: str
    """Queue name."""
    status: RunStatus
    """Current status."""
    args: Value | None
    """Encoded arguments (None in listings, which do not load them)."""
    result: Value | None
    """Encoded result once completed (None in listings)."""
    error: ErrorInfo | None
    """Final error once failed (or the last attempt's error while retrying)."""
    idempotency_key: str | None
    """Idempotency key given at trigger."""
    attempt: int
    """Task-level attempt number, from 1."""
    lease: int
    """Claim counter; writes must carry the current value."""
    worker_id: str | None
    """Worker that holds the lease while RUNNING."""
    available_at: float | None
    """When a QUEUED/WAITING run becomes claimable."""
    cancel_requested: bool
    """A cancel was asked for while the run was RUNNING."""
    note: str | None
    """Why the run is not progressing, when perdure knows (e.g. no worker knows its task)."""
    created_at: float
    """Creation time."""
    started_at: float | None
    """First claim."""
    updated_at: float
    """Last change."""
    finished_at: float | None
    """Terminal time."""
    priority: int = 0
    """Priority within its queue."""
    concurrency_key: str | None = None
    """Concurrency key."""
    expires_at: float | None = None
    """TTL deadline for its start."""
    parent_id: str | None = None
    """The run that triggered it from its body."""
    signals: int = 0
    """Signals sent to the run so far (token completions, events, messages for it): a run that
    suspends compares it with the count its claim saw, so none sent meanwhile is missed."""
    waiting_for: str | None = None
    """While WAITING: what for ("sleep", "children", or a signal key: "token:ID",
    "event:NAME", "message:TOPIC"; see wait_key)."""
    tags: tuple[str, ...] = ()
    """Tags given at trigger."""
    trace_context: str | None = None
    """The W3C traceparent of the code that triggered it, if it was traced."""
    version: str | None = None
    """The version of the code it is pinned to: that of the worker that first ran it, or the one
    given at trigger; None while no worker has started it."""
    replay_of: str | None = None
    """The run it replays, if it was made by a replay."""
    continued_as: str | None = None
    """The run it continued as (perdure.continue_as_new): it completed without a result, and
    its handle's result is that run's (to the end of the chain)."""
    metadata: Value | None = None
    """Its metadata (perdure.metadata.set), an encoded mapping; in get_run only."""

    @property
    def has_history(self) -> bool:
        """Whether its journal may hold entries: it was claimed before, or it replays a run
        (and may reuse what that one recorded)."""
        return self.lease > 1 or self.replay_of is not None

    @property
    def held(self) -> Lease:
        """The lease of a claimed run (its claim counter and worker): what fences the claiming
        worker's writes."""
        return Lease(self.lease, self.worker_id or "")


STRATEGIES = ("queue", "cancel-newest", "cancel-in-progress")
"""What a queue does with a run that does not fit its limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """A queue's limits, as declared in code (app.queue) or set at run time."""

    name: str
    """Queue name."""
    concurrency: int | None = None
    """Runs of the queue running at once; None: no limit."""
    key_concurrency: int | None = None
    """Runs per concurrency key running at once; None: no per-key limit."""
    rate_limit: int | None = None
    """Starts per `rate_period` seconds; None: no rate limit."""
    rate_period: float | None = None
    """Sliding window of the rate limit, seconds."""
    rate_by_key: bool = False
    """The rate limit counts each concurrency key apart."""
    strategy: str = "queue"
    """When a limit is reached: "queue" (wait), "cancel-newest" (cancel the run that does not
    fit), "cancel-in-progress" (cancel the running ones, start the new one)."""
    paused: bool = False
    """A paused queue starts nothing."""

    @property
    def limited(self) -> bool:
        """True when this queue can hold a run back."""
        return (
            self.concurrency is not None
            or self.key_concurrency is not None
            or self.rate_limit is not None
            or self.paused
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """A queue with its current load."""

    app: str
    """App name."""
    config: QueueConfig
    """Limits."""
    overridden: bool
    """Set at run time (perdure queues set): declarations in code no longer change it."""
    running: int
    """Runs running now."""
    queued: int
    """Runs waiting to start or resume."""
    oldest_waiting_at: float | None
    """available_at of the longest-waiting claimable run."""


class Claimed(list["RunRecord"]):
    """Runs leased by claim_runs, their histories, and when runs held back by a rate limit
    may start."""

    retry_at: float | None = None
    """Earliest time a rate-limited run may start (None: only a finishing run, a change of
    limits or a new run can make more claimable)."""
    histories: dict[str, History]
    """Each claimed run's journal and attempts, read with the claim (one read for the batch
    instead of two per run): what load_journal and load_attempts would return."""
    looked: bool = False
    """True when next_at was read with the claim (what next_wake_at would return after it)."""
    next_at: float | None = None
    """With looked: when the next run left may be claimed (None: no run left)."""
    unreadable: dict[str, Exception]
    """Claimed runs whose arguments could not be read here (no or a wrong encryption key, a
    blob missing from this process's blob store), with why; their `args` are None."""

    def __init__(self, runs: Iterable[RunRecord] = ()) -> None:
        super().__init__(runs)
        self.histories = {}
        self.unreadable = {}


@dataclass(frozen=True, slots=True)
class History:
    """A run's journal and its attempts, as recorded."""

    journal: list[JournalEntry]
    """Journal entries in seq order."""
    attempts: list[Attempt]
    """Attempts, as load_attempts returns them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayVerdict:
    """What replaying a run's journal against code found (perdure replay-check)."""

    run_id: str
    """The run replayed."""
    task: str
    """Its task."""
    ok: bool
    """The code takes the path the journal recorded, as far as it goes."""
    seq: int = 0
    """Where it does not: the journal position."""
    called: str = ""
    """What the code calls there ("" when it calls nothing: it ended first)."""
    recorded: str = ""
    """What the journal recorded there."""
    message: str = ""
    """In words."""
    replayed: int = 0
    """Recorded positions replayed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One attempt of a step (seq >= 1) or of the task itself (seq 0)."""

    run_id: str
    """Run id."""
    run_attempt: int
    """Task-level attempt during which this attempt ran."""
    seq: int
    """Journal position of the step; 0 for the task-level attempt."""
    attempt: int
    """Attempt number, from 1."""
    started_at: float
    """Start time."""
    finished_at: float
    """End time."""
    error: ErrorInfo | None = None
    """None when the attempt succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One finished position of a run's journal."""

    seq: int
    """Position, from 1, in call order."""
    kind: EntryKind
    """What it records."""
    name: str
    """Step name (or the kind, for recorded values)."""
    status: EntryStatus
    """Completed with a value or failed with an error."""
    value: Value | None = None
    """The recorded value."""
    error: ErrorInfo | None = None
    """The recorded error."""
    started_at: float
    """When the first attempt started."""
    finished_at: float
    """When it was recorded."""
    attempt: Attempt | None = None
    """The attempt that succeeded (stored in the entry's row; load_attempts lists it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A worker process, as registered."""

    id: str
    """Worker id."""
    app: str
    """App it serves."""
    host: str
    """Host name."""
    host_key: str
    """Host name, boot id and PID namespace: PIDs are comparable only between equal keys."""
    pid: int
    """Process id."""
    pid_started: int
    """Process start time (clock ticks since boot), so a reused PID is never mistaken for it."""
    started_at: float
    """Registration time."""
    heartbeat_at: float
    """Last heartbeat."""
    tasks: list[str] = field(default_factory=list)
    """Tasks it can run."""
    version: str | None = None
    """The version of the code it runs (it resumes only runs of that version)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """How a worker ends its hold on a run; see Store.finish_attempt."""

    status: RunStatus
    """New status: COMPLETED, FAILED, CANCELLED, WAITING (suspend) or QUEUED (retry/release)."""
    available_at: float | None = None
    """For WAITING and QUEUED: when it becomes claimable again."""
    result: Value | None = None
    """For COMPLETED."""
    error: ErrorInfo | None = None
    """For FAILED, and for QUEUED when it is a task retry."""
    next_attempt: bool = False
    """QUEUED as a task retry: bump the attempt and drop failed journal entries from the first."""
    attempt: Attempt | None = None
    """The task-level attempt that ends here, if one ends."""
    children_target: int | None = None
    """WAITING for child runs: claimable again once this many awaited children have ended
    (at once if they already have)."""
    note: str | None = None
    """Why the run is not progressing (see RunRecord.note), e.g. a release because this worker
    cannot read the run."""
    wakes: bool = False
    """This end may make another run claimable (a child's end wakes its parent): announce it
    to idle workers. (Workers held back by a limit poll instead: every end would be too many
    wake-ups.)"""
    waiting_for: str | None = None
    """For WAITING: what the run waits for (see RunRecord.waiting_for)."""
    signals: int | None = None
    """For WAITING on a signal: the signals the claim saw (RunRecord.signals); if more arrived
    since, the run is claimable again at once."""
    continue_as: NewRun | None = None
    """For COMPLETED by perdure.continue_as_new: the run it continues as, created with its end
    in one transaction."""


class MissedTicks(StrEnum):
    """What a schedule does with ticks that passed while no worker could fire them."""

    RUN_ONCE = "run_once"
    """One run for the latest missed tick, then on as scheduled."""
    SKIP = "skip"
    """No run for them (a tick late by less than a minute still runs)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSchedule:
    """A schedule to declare (in code) or create (at run time)."""

    app: str
    """App name."""
    key: str
    """Unique within the app: a declared schedule's task name, or the key given."""
    task: str
    """The task each tick triggers, with the tick's time as its first argument."""
    queue: str = "default"
    """The task's queue."""
    cron: str
    """Cron expression (five fields, or six with seconds last)."""
    tz: str
    """IANA time zone the expression is read in."""
    missed: MissedTicks = MissedTicks.RUN_ONCE
    """What to do with ticks missed during downtime."""
    declared: bool = False
    """Declared in code (@app.task(schedule=...)): workers keep it as the code says."""
    next_at: float
    """The first tick (POSIX seconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    """A schedule as stored."""

    app: str
    """App name."""
    key: str
    """Key within the app."""
    task: str
    """Task it triggers."""
    queue: str
    """Its queue."""
    cron: str
    """Cron expression."""
    tz: str
    """Time zone."""
    missed: MissedTicks
    """Policy for missed ticks."""
    declared: bool
    """Declared in code."""
    paused: bool
    """A paused schedule fires nothing (its ticks are missed, then by its policy)."""
    next_at: float
    """Its next tick."""
    last_tick: float | None
    """The last tick that triggered a run."""
    last_run_id: str | None
    """That run."""
    created_at: float
    """Creation time."""
    updated_at: float
    """Last change."""


class Scope(StrEnum):
    """What an API key may do; each scope includes the ones before it."""

    READ = "read"
    """Read runs, tokens, events, queues and schedules."""
    TRIGGER = "trigger"
    """Also trigger runs, complete tokens, send events and messages."""
    WORKER = "worker"
    """Also run a hybrid worker: claim runs and write their journals (the worker API)."""
    ADMIN = "admin"
    """Also cancel runs, pause and resume queues and schedules."""

    def allows(self, needed: Scope) -> bool:
        """Whether a key of this scope may do what `needed` allows."""
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An API key as stored: never the key itself."""

    id: str
    """The key's public id (its first part)."""
    name: str
    """What it is for."""
    scope: Scope
    """What it may do."""
    hash: str
    """Hex SHA-256 of the whole key."""
    created_at: float
    """Creation time."""
    revoked_at: float | None = None
    """When it was revoked (it then opens nothing)."""
