"""The storage contract: the `Store` protocol of domain operations (the records it keeps are in
perdure.records).

Every backend (SQLite now, PostgreSQL next) implements `Store`; one contract test suite runs
against each. Times are POSIX seconds (float). Writes that belong to a run carry the run's `lease`
(see `Lease`): a write with a stale lease raises `LeaseLost`, so a worker that lost its run can
never record into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Protocol

from perdure.blobs.base import BlobStore
from perdure.config import env_float
from perdure.records import (
    ApiKey,
    Attempt,
    Claimed,
    JournalEntry,
    Lease,
    NewRun,
    NewSchedule,
    QueueConfig,
    QueueStats,
    RunRecord,
    RunStatus,
    ScheduleRecord,
    Transition,
    Value,
    WorkerRecord,
)
from perdure.stats_records import RunStats
from perdure.wait_records import (
    EventRecord,
    NewEvent,
    NewMessage,
    NewToken,
    Sent,
    TokenRecord,
    TokenStatus,
    Wait,
    WaitState,
)


def trigger_timeout() -> float:
    """Seconds a trigger waits for a store that cannot take writes (a database down, a full
    disk) before it raises StoreUnavailable: $PERDURE_TRIGGER_TIMEOUT, else 30. Workers' own
    writes wait longer (they must not drop what a run did)."""
    return env_float("PERDURE_TRIGGER_TIMEOUT", 30.0)


ChangeToken = int
"""Opaque: what a store needs to tell whether anything changed since (see change_token)."""


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

    async def advance_clock(self, seconds: float) -> None:
        """Time travel, for tests (perdure.testing): this process's clock of the store runs
        `seconds` further ahead, so durable sleeps, wait and token timeouts, retry backoffs and
        schedules come due without waiting; workers in this process look again at once.
        SQLite only (ConfigurationError on PostgreSQL, whose clock is the server's)."""
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

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        task: str | None = None,
        tag: str | None = None,
        before: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest runs first (in `status`, of `task`, with `tag`, with ids before `before` — the
        last id of the page before: pages by key, never by offset —, created in [since,
        until)), without arguments, results or metadata."""
        ...

    async def mark_hook(self, run_id: str, lease: Lease, event: str, key: int = 0) -> bool:
        """Record that the run's lifecycle hooks for `event` (tell events of a kind apart by
        `key`) are about to run, if the run is held under `lease` and they never ran before:
        whether they may run now (durable first: at most once)."""
        ...

    async def stranded_runs(
        self, *, app: str | None = None, before: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs (of `app`, default all) waiting to be resumed by workers of a version that no
        live worker of their app runs, newest first (with ids before `before`), as list_runs
        gives them."""
        ...

    async def repin_run(self, run_id: str, *, lease: int, version: str) -> bool:
        """Pin a queued or waiting run to `version` if its lease is still `lease` (no worker
        took it since it was read); whether it was."""
        ...

    async def claim_runs(
        self,
        *,
        app: str,
        worker_id: str,
        tasks: list[str],
        limit: int,
        task_limits: dict[str, int] | None = None,
        version: str | None = None,
    ) -> Claimed:
        """Lease up to `limit` claimable runs of `tasks` (QUEUED or WAITING with
        available_at <= now) to `worker_id`, a worker of `version`: runs pinned to that version
        or to none, which it pins to it; each claim bumps the run's lease. A worker that is
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

    async def refresh_statistics(self) -> bool:
        """Give the database's query planner statistics of the runs table when it has none yet
        and holds enough runs for a claim's plan to matter; whether it did (never on SQLite,
        whose claim's plan the query itself fixes)."""
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
        """Rewrite the inline values of the next `limit` runs (ids after `after`; their
        journals, tokens, messages and waits too) and of what belongs to no run in that range
        of ids (tokens made outside runs, events) under the current key (in the clear if none);
        returns (values rewritten, where the next walk starts: None when this one found fewer
        than `limit` runs and so took every value left). A value changed meanwhile by a worker
        is left as it is (the worker wrote it under the current key)."""
        ...

    async def reclaim(self) -> None:
        """Give back the space of deleted and rewritten rows (SQLite: VACUUM, which also leaves
        no old bytes in the file; PostgreSQL: VACUUM, which marks them free)."""
        ...

    async def referenced_blobs(self, keys: list[str]) -> set[str]:
        """The blob keys among `keys` that some stored row still references."""
        ...

    async def next_wake_at(
        self, *, app: str, tasks: list[str], version: str | None = None
    ) -> float | None:
        """The earliest available_at among QUEUED/WAITING runs of `tasks` that a worker of
        `version` may start (in the past when one is claimable now; None when there is none). A
        read: cheap, no write."""
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

    async def create_token(self, token: NewToken) -> TokenRecord:
        """Make a token (WAITING); with the id, idempotency key or (run, name) of one made
        before, that one, unchanged."""
        ...

    async def get_token(self, token_id: str) -> TokenRecord:
        """The token with its data; TokenNotFound when there is none."""
        ...

    async def list_tokens(
        self,
        *,
        app: str | None = None,
        run_id: str | None = None,
        status: TokenStatus | None = None,
        limit: int = 100,
    ) -> list[TokenRecord]:
        """Newest tokens first, without their data."""
        ...

    async def complete_token(
        self,
        *,
        app: str | None,
        data: Value,
        token_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
    ) -> TokenRecord:
        """Complete a token (of `app`; None: of any app), by id or by its run and name (a
        named token the run has not made yet is made completed: its wait will find it so), and
        signal the runs waiting for it. TokenNotFound, or TokenAlreadyCompleted when it was
        completed or timed out before (the first completion stands); RunNotFound for a named
        token of no run."""
        ...

    async def send_event(self, event: NewEvent, *, runs: list[NewRun] | None = None) -> Sent:
        """Store an event with the `runs` it triggers (both, or neither when its idempotency key
        was sent before), and signal the runs waiting for an event of its name whose match its
        payload fits."""
        ...

    async def list_events(
        self, *, app: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest events first, without their payloads."""
        ...

    async def send_message(self, message: NewMessage) -> tuple[str, bool]:
        """Put a message in a run's mailbox and signal the run; (message id, created) (a
        repeated idempotency key: the first message's id and False). RunNotFound; PerdureError
        when the run has ended."""
        ...

    async def begin_wait(self, wait: Wait, lease: Lease) -> WaitState:
        """Register a run's wait at its journal position (the first registration's deadline
        and start stand) and say whether it is over: ended by a completed token, a matching
        event since it began, or the first message of its topic not received before (taken
        for this position, so never delivered twice), or timed out. LeaseLost when stale."""
        ...

    async def run_waits(self, run_id: str, *, values: bool = True) -> list[Wait]:
        """The waits a run registered, in journal order (with values=False, matches without
        their bytes, as in get_run)."""
        ...

    async def put_schedule(self, schedule: NewSchedule) -> ScheduleRecord:
        """Create or replace a schedule (by app and key); one whose expression and time zone
        stay keeps its next tick."""
        ...

    async def list_schedules(self, app: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (of `app`), by app and key."""
        ...

    async def pause_schedule(
        self, app: str, key: str, *, paused: bool, next_at: float | None = None
    ) -> ScheduleRecord | None:
        """Pause or resume a schedule (resuming from `next_at`); None when there is none."""
        ...

    async def delete_schedule(self, app: str, key: str) -> bool:
        """Delete a schedule; False when there was none."""
        ...

    async def prune_declared(self, app: str, keep: Collection[str]) -> int:
        """Delete the schedules declared in code (by earlier code) that are not in `keep`."""
        ...

    async def fire_schedules(self, *, app: str, tasks: list[str]) -> tuple[list[str], float | None]:
        """Fire the due schedules of `tasks` (each tick's run created exactly once, however
        many workers fire at once; missed ticks by each schedule's policy); returns the runs
        created and when the next tick is due (None: no schedule)."""
        ...

    async def set_metadata(self, run_id: str, lease: Lease, metadata: Value) -> None:
        """Replace the run's metadata (an encoded mapping); LeaseLost when stale."""
        ...

    async def append_stream(
        self,
        run_id: str,
        lease: Lease,
        name: str,
        chunks: Sequence[tuple[Value, str]],
        *,
        max_chunks: int,
    ) -> list[int | None]:
        """Append chunks, each with its `origin` (where in the run's code it was made), to the
        run's stream `name`, in one transaction; the position of each among the run's chunks. A
        chunk whose origin the run holds already is not added again (a replay): its position is
        the one kept. None for each chunk past `max_chunks` chunks in the run. LeaseLost when
        stale."""
        ...

    async def read_stream(
        self, run_id: str, name: str | None, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, Value]]:
        """(position, stream name, chunk) of the run's stream `name` (None: all its streams)
        after position `after`, oldest first."""
        ...

    async def create_api_key(self, key: ApiKey) -> None:
        """Keep an API key (its id and hash)."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, revoked or not; None when there is none."""
        ...

    async def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        ...

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key or it was revoked already."""
        ...

    async def run_stats(
        self,
        *,
        since: float,
        app: str | None = None,
        task: str | None = None,
        buckets: int = 60,
    ) -> RunStats:
        """Runs active now and runs that ended since `since`, per task (of `app`, of `task`;
        default all): counts by status, duration percentiles, and completed/failed runs in
        `buckets` equal slices of the window."""
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
        wake: asyncio.Future[None] | None = None,
    ) -> bool:
        """Return True as soon as `topics` (see store.notify; None: anything) may have changed
        since `since` (default: now), here or in another process; False after `timeout`
        seconds, or once the caller resolves `wake` (a future of its own, for its own events).
        May wake spuriously: callers re-read the state they wait on."""
        ...
