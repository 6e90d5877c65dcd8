"""The storage contract: records, statuses and the `Store` protocol of domain operations.

Every backend (SQLite now, PostgreSQL next) implements `Store`; one contract test suite runs
against each. Times are POSIX seconds (float). Writes that belong to a run carry the run's `lease`
(see `Lease`): a write with a stale lease raises `LeaseLost`, so a worker that lost its run can
never record into it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import msgspec

from perdure.blobs.base import BlobStore
from perdure.config import env_float


def trigger_timeout() -> float:
    """Seconds a trigger waits for a store that cannot take writes (a database down, a full
    disk) before it raises StoreUnavailable: $PERDURE_TRIGGER_TIMEOUT, else 30. Workers' own
    writes wait longer (they must not drop what a run did)."""
    return env_float("PERDURE_TRIGGER_TIMEOUT", 30.0)


ChangeToken = int
"""Opaque: what a store needs to tell whether anything changed since (see change_token)."""


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    """Waiting for a worker (new, released, or backing off before a task retry)."""
    RUNNING = "running"
    """Leased by a worker that executes it."""
    WAITING = "waiting"
    """Suspended by a durable wait (sleep, child runs); holds no worker slot; a timer or its
    children's ends wake it."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """A run as stored."""

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


class Store(Protocol):
    """Domain operations on runs, journals and workers. Every method is safe to call
    concurrently from many coroutines and processes."""

    blobs: BlobStore
    """Where values over `inline_limit` go."""
    session_liveness: bool
    """Capability: dead_sessions() can prove a worker dead by its database session."""
    inline_limit: int
    """Encoded values larger than this many bytes are offloaded to the blob store."""

    async def open(self) -> None:
        """Connect and check (or apply) the schema version."""
        ...

    def now(self) -> float:
        """The store's clock, in POSIX seconds. Every time the store keeps or compares (when a
        run may start or wake, a heartbeat, a lease's expiry, a TTL) is on it, so processes
        whose clocks disagree still agree on these. SQLite: this host's clock (every process
        shares it); PostgreSQL: the server's, as this process's clock plus an offset measured
        at open and with every heartbeat and reap."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def offload(self, value: Value | None) -> Value | None:
        """`value` with its bytes in the blob store when it is over `inline_limit` (else as
        given); the store does this for every value it writes, callers may do it earlier."""
        ...

    async def detach(self) -> None:
        """Release what the calling event loop (or thread) holds, before that loop ends; the
        store stays open for others."""
        ...

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        """Apply (or list, with dry_run) the pending migrations up to version `target` (default:
        all); returns their names."""
        ...

    async def create_run(self, run: NewRun) -> tuple[str, bool]:
        """Insert a run; returns (run_id, created). With an idempotency key that already has a
        run, nothing is inserted and the existing id is returned with created=False."""
        ...

    async def create_runs(self, runs: list[NewRun]) -> list[tuple[str, bool]]:
        """create_run for many runs in one durable write; results in order."""
        ...

    async def get_run(self, run_id: str, *, values: bool = True) -> RunRecord:
        """The run with its arguments and result; RunNotFound when there is none. With
        values=False, the values' sizes and codecs without their bytes (nothing to decrypt or
        fetch from the blob store: a run whose values cannot be read can still be shown)."""
        ...

    async def get_runs(self, run_ids: list[str]) -> list[RunRecord]:
        """Those runs with their results, in the order given; RunNotFound if one is missing."""
        ...

    def completed_result(self, run_id: str) -> Value | None:
        """The result of a run whose completion this store committed, in this process, if it
        still remembers it (small results of recent completions); None: read the run. A
        completed run never changes, so this is what get_run would return."""
        ...

    async def list_runs(
        self, *, status: RunStatus | None = None, task: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Newest runs first, without arguments or results."""
        ...

    async def claim_runs(
        self,
        *,
        app: str,
        worker_id: str,
        tasks: list[str],
        limit: int,
        task_limits: dict[str, int] | None = None,
    ) -> Claimed:
        """Lease up to `limit` claimable runs of `tasks` (QUEUED or WAITING with
        available_at <= now) to `worker_id`; each claim bumps the run's lease. A worker that is
        not registered and alive claims nothing. Never beyond a
        queue's, a concurrency key's or a task's limit (`task_limits`: task -> runs at once),
        nor its rate limit, counted over every worker; higher priority first, concurrency keys
        in turn. Runs past their TTL expire instead; the queue's strategy may cancel runs."""
        ...

    async def declare_queues(self, app: str, queues: list[QueueConfig]) -> None:
        """Record queues declared in code (a queue set at run time keeps its settings)."""
        ...

    async def set_queue(
        self,
        app: str,
        name: str,
        *,
        concurrency: int | None = None,
        unlimited: bool = False,
        paused: bool | None = None,
    ) -> QueueConfig:
        """Change a queue at run time: its `concurrency` limit (or none, with `unlimited`),
        paused or not (None: unchanged). Workers apply it at their next claim. Creates the
        queue if it is new; from then on, declarations in code no longer change it."""
        ...

    async def queue_stats(self, app: str | None = None) -> list[QueueStats]:
        """Every queue that is declared or holds runs, with its load."""
        ...

    async def expire_runs(self) -> int:
        """Expire runs past their TTL that never started; returns how many."""
        ...

    async def purge_runs(
        self,
        *,
        finished_before: float,
        statuses: Collection[RunStatus],
        app: str | None = None,
        limit: int = 500,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete up to `limit` runs in `statuses` (terminal ones only) that ended before
        `finished_before`, with their journals and attempts, in one write; returns their ids
        (with dry_run: only lists them). A child whose parent still waits is kept."""
        ...

    async def reencrypt_values(
        self, *, after: str = "", limit: int = 200
    ) -> tuple[int, str | None]:
        """Rewrite the inline values of the next `limit` runs (ids after `after`) under the
        current key (in the clear if none); returns (values rewritten, the last run id, None
        when there are no more). A value changed meanwhile by a worker is left as it is (the
        worker wrote it under the current key)."""
        ...

    async def reclaim(self) -> None:
        """Give back the space of deleted and rewritten rows (SQLite: VACUUM, which also leaves
        no old bytes in the file; PostgreSQL: VACUUM, which marks them free)."""
        ...

    async def referenced_blobs(self, keys: list[str]) -> set[str]:
        """The blob keys among `keys` that some stored row still references."""
        ...

    async def next_wake_at(self, *, app: str, tasks: list[str]) -> float | None:
        """The earliest available_at among QUEUED/WAITING runs of `tasks` (in the past when one
        is claimable now; None when there is none). A read: cheap, no write."""
        ...

    async def load_journal(self, run_id: str, *, values: bool = True) -> list[JournalEntry]:
        """The run's finished journal entries in seq order, values resolved (with values=False,
        as in get_run: sizes without bytes)."""
        ...

    async def load_attempts(self, run_id: str) -> list[Attempt]:
        """Every attempt of the run, oldest first."""
        ...

    async def append(
        self, run_id: str, lease: Lease, *, entries: list[JournalEntry], attempts: list[Attempt]
    ) -> None:
        """Record journal entries and attempts in one durable write (group-committed with other
        runs' writes). LeaseLost when `lease` is stale; an entry at an occupied seq is kept as
        it was (the first record wins) and raises CorruptJournal."""
        ...

    async def finish_attempt(
        self,
        run_id: str,
        lease: Lease,
        transition: Transition,
        *,
        entries: list[JournalEntry],
        attempts: list[Attempt],
    ) -> None:
        """End the worker's hold on the run: complete, fail, cancel, suspend, retry or release,
        with any pending journal entries and attempts, in one durable write. LeaseLost when
        stale; RunCancelled (nothing written) when a cancel was requested meanwhile and the
        transition is not CANCELLED: a finish never overwrites a requested cancel."""
        ...

    async def cancel_run(self, run_id: str) -> RunStatus:
        """Cancel a run: at once if it is not running (or its worker is no longer alive), else
        ask its worker. Returns the status after the call (CANCELLED, or RUNNING while the
        worker stops it)."""
        ...

    async def cancel_requests(self, worker_id: str) -> list[tuple[str, int]]:
        """(run_id, lease) of this worker's running runs that were asked to cancel."""
        ...

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker as alive."""
        ...

    async def heartbeat(self, worker_id: str) -> bool:
        """One small write per worker per interval; False if the worker was declared dead."""
        ...

    async def live_workers(self, *, app: str) -> list[WorkerRecord]:
        """Workers not declared dead."""
        ...

    async def reap_workers(self, worker_ids: list[str], *, reason: str) -> int:
        """Declare workers dead and requeue their running runs at once (with those of any other
        worker that is no longer alive); returns runs requeued."""
        ...

    async def deregister_worker(self, worker_id: str) -> None:
        """A worker that stopped cleanly."""
        ...

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        """Workers among `worker_ids` whose database session is provably gone (stores with the
        `session_liveness` capability; others return [])."""
        ...

    async def release_strays(self, worker_id: str, *, keep: list[str]) -> list[str]:
        """Requeue runs leased to `worker_id` that it does not run (`keep` are those it does):
        claims whose answer was lost to a dropped connection. Returns their ids. Runs leased to
        workers that are no longer alive (declared dead, stopped) are requeued too: no run stays
        `running` without a live worker."""
        ...

    async def note_unclaimable(self, *, app: str, tasks: list[str], note: str) -> int:
        """Set `note` on claimable runs whose task is not in `tasks`; returns how many."""
        ...

    def change_token(self) -> ChangeToken:
        """A marker of "now", to pass to wait_for_change(since=) after reading some state."""
        ...

    def changed_since(self, since: ChangeToken, topics: Collection[str] | None = None) -> bool:
        """True if `topics` (None: anything) may have changed since `since`, as far as this
        process has heard (another process's change may still be on its way: wait_for_change
        returns when it arrives)."""
        ...

    async def wait_for_change(
        self,
        timeout: float,
        *,
        topics: Collection[str] | None = None,
        since: ChangeToken | None = None,
    ) -> bool:
        """Return True as soon as `topics` (see store.notify; None: anything) may have changed
        since `since` (default: now), here or in another process; False after `timeout`
        seconds. May wake spuriously: callers re-read the state they wait on."""
        ...
