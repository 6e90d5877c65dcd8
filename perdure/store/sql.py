"""The store, written once: every `Store` operation over a `Connector` (see connector.py).

Each operation prepares its parameters (values over the inline limit go to the blob store
first), runs a generator of named queries through the connector, and turns rows back into
records. SQLite and PostgreSQL differ only in their connectors and their queries.sql.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection
from typing import Any

from perdure.blobs.base import BlobStore
from perdure.crypto import Keyring
from perdure.errors import RunNotFound
from perdure.records import (
    Attempt,
    Claimed,
    JournalEntry,
    Lease,
    NewRun,
    QueueConfig,
    QueueStats,
    RunRecord,
    RunStatus,
    Transition,
    Value,
)
from perdure.store.admission import CANDIDATE_SCAN, Turns, admit, limits_apply, rate_window
from perdure.store.api_keys import ApiKeyOperations
from perdure.store.base import ChangeToken, trigger_timeout
from perdure.store.connector import Batch, Connector, Last, Operation, Query, Result, Row
from perdure.store.notify import CANCEL, CLAIMABLE, run_topic
from perdure.store.rows import (
    UNKNOWN,
    Unknown,
    check_held,
    check_same_entry,
    insert_run,
    insert_runs,
    purge_params,
    refused_finish,
    set_queue_params,
    wake_time,
)
from perdure.store.run_data import RunDataOperations
from perdure.store.schedule_ops import ScheduleOperations
from perdure.store.stats import StatsOperations
from perdure.store.version_ops import VersionOperations
from perdure.store.wait_ops import WaitOperations
from perdure.store.worker_ops import WorkerOperations
from perdure.values import StoredValues

_QUEUES_FRESH_FOR = 1.0  # seconds a store trusts its copy of an app's queues to pick the claim path
_STATISTICS_AFTER = 1000
"""Runs in a table without statistics from which the store analyzes it (see refresh_statistics):
PostgreSQL's planner guesses until then, and a guess can sort every due run on each claim."""
_CLAIM_LOCK_CLASS = 7_366_103  # (PostgreSQL) advisory lock class of the claims of one app

_RUN_PARTS = (
    "delete_journals",
    "delete_attempts",
    "delete_tokens",
    "delete_messages",
    "delete_waits",
    "delete_streams",
    "delete_run_tags",
    "delete_run_hooks",
    "delete_runs",
)
"""What a purged run leaves behind it: nothing (the queries that delete each part)."""

ClaimAnswer = tuple[list[Row], float | None, float | Unknown | None]


class SQLStore(
    ScheduleOperations,
    WaitOperations,
    RunDataOperations,
    ApiKeyOperations,
    StatsOperations,
    VersionOperations,
    WorkerOperations,
):
    """`Store` on a SQL database reached through `db`."""

    def __init__(
        self,
        db: Connector,
        *,
        blobs: BlobStore,
        inline_limit: int,
        keyring: Keyring | None = None,
    ) -> None:
        self.db = db
        self.values = StoredValues(blobs, inline_limit=inline_limit, keyring=keyring)
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.session_liveness = db.session_liveness
        self._turns = Turns()
        self._queue_cache: dict[str, tuple[float, dict[str, QueueConfig]]] = {}
        self._analyzed = False  # (once per process: a role that may not analyze only warns)

    async def advance_clock(self, seconds: float) -> None:
        self.db.advance_clock(seconds)
        self.db.notifier.notify({CLAIMABLE})  # what came due is claimable: workers look again

    def now(self) -> float:
        return self.db.now()

    async def offload(self, value: Value | None) -> Value | None:
        return await self.values.offload(value)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def detach(self) -> None:
        await self.db.detach()

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        return await self.db.migrate(dry_run=dry_run, target=target)

    # -- runs --------------------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[str, bool]:
        (created,) = await self.create_runs([run])
        return created

    async def create_runs(self, runs: list[NewRun]) -> list[tuple[str, bool]]:
        all_params = await self._new_runs_params(runs, self.now())
        fast = self.db.fast
        if (
            fast is not None
            and len(runs) == 1
            and not (runs[0].debounce_key or runs[0].tags or runs[0].replay_of)
        ):
            return [await fast.create_one(all_params[0], give_up_after=trigger_timeout())]

        def create() -> Operation[list[tuple[str, bool]]]:
            plain = [params for params in all_params if params["debounce_key"] is None]
            inserted = iter((yield from insert_runs(plain)) if plain else [])
            out = []
            for params in all_params:
                if params["debounce_key"] is not None:
                    row = (yield Query("upsert_debounced_run", params)).first
                    created = row["id"] == params["id"]
                    if created and params["tags"] is not None:  # (a burst's run keeps its tags)
                        tags = {"run_id": params["id"], "tags": params["tags"]}
                        yield Query("insert_run_tags", tags)
                    out.append((str(row["id"]), created))
                elif next(inserted):
                    out.append((params["id"], True))
                else:
                    row = (yield Query("run_by_idempotency_key", params)).first
                    out.append((str(row["id"]), row["id"] == params["id"]))
            return out

        # a trigger gives up on a database that cannot take writes (a full disk) in the end
        return await self.db.write(
            create, "create_runs", (CLAIMABLE,), give_up_after=trigger_timeout()
        )

    async def get_run(self, run_id: str, *, values: bool = True) -> RunRecord:
        rows = await self._one("get_run", {"id": run_id}, "get_run")
        if not rows:
            raise RunNotFound(f"no run with id {run_id!r} in {self.db.where}")
        return await self._run_record(rows[0], fetch=values)

    async def get_runs(self, run_ids: list[str]) -> list[RunRecord]:
        rows = await self._one("get_runs", {"ids": run_ids}, "get_runs")
        return await self._in_order(run_ids, rows)

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
        params = {
            "status": None if status is None else str(status),
            "task": task,
            "tag": tag,
            "before": before,
            "since": since,
            "until": until,
            "limit": limit,
        }
        query = "list_runs" if tag is None else "list_runs_tagged"  # (by the tag's index)
        return await self._runs(query, params, "list_runs")

    # -- claims ------------------------------------------------------------------------------

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
        params = {
            "app": app,
            "worker_id": worker_id,
            "tasks": tasks,
            "version": version,
            "limit": limit,
            "now": self.now(),
            "lock_class": _CLAIM_LOCK_CLASS,
        }
        task_limits = task_limits or {}
        limited = limits_apply(await self._queues(app), task_limits)

        def claim() -> Operation[ClaimAnswer]:
            if not limited:
                # with the look at what is left (the worker's next read)
                _expired, claimed, left = yield Last(
                    [Query(name, params) for name in ("expire_runs", "claim_runs", "next_wake_at")]
                )
                return claimed.rows, None, wake_time(left.rows)
            return (yield from self._admit_and_claim(params, task_limits))

        # not durable: a claim lost to a power cut only means the run is claimed again
        rows, retry_at, next_at = await self.db.write(claim, "claim_runs", durable=False)
        return await self._claimed(rows, retry_at, next_at)

    def _admit_and_claim(
        self, params: dict[str, Any], task_limits: dict[str, int]
    ) -> Operation[ClaimAnswer]:
        """The claim when limits apply, under the app's claim lock (SQLite: its one writer):
        what is read here is what every earlier claim of the app committed."""
        now = params["now"]
        scan = {**params, "scan": params["limit"] + CANDIDATE_SCAN}
        _lock, _expired, fresh, candidates, running = yield Batch(
            [
                Query("claim_lock", params),
                Query("expire_runs", params),
                Query("app_queues", params),
                Query("claim_candidates", scan),
                Query("running_runs", params),
            ]
        )
        queues = {row["name"]: self._queue_config(row) for row in fresh.rows}
        window = rate_window(queues)
        starts: list[Row] = []
        if window:
            starts = (yield Query("recent_starts", {**params, "since": now - window})).rows
        admission = admit(
            candidates.rows,
            running.rows,
            starts,
            queues,
            task_limits,
            params["limit"],
            now,
            self._turns,
        )
        for query, ids, more in admission.cancellations(now):
            yield Query(query, {**more, "ids": ids})
        (claimed,) = yield Last([Query("claim_ids", {**params, "ids": admission.claim})])
        return claimed.rows, admission.retry_at, UNKNOWN

    async def _queues(self, app: str) -> dict[str, QueueConfig]:
        """The app's queues, read at most once a second (to pick the claim path; the limited
        path reads them again under its lock)."""
        cached = self._queue_cache.get(app)
        if cached is not None and time.monotonic() - cached[0] < _QUEUES_FRESH_FOR:
            return cached[1]
        rows = await self._one("app_queues", {"app": app}, "app_queues")
        queues = {row["name"]: self._queue_config(row) for row in rows}
        self._queue_cache[app] = (time.monotonic(), queues)
        return queues

    async def next_wake_at(
        self, *, app: str, tasks: list[str], version: str | None = None
    ) -> float | None:
        params = {"app": app, "tasks": tasks, "version": version}
        return wake_time(await self._one("next_wake_at", params, "wake"))

    # -- journal -----------------------------------------------------------------------------

    async def load_journal(self, run_id: str, *, values: bool = True) -> list[JournalEntry]:
        rows = await self._one("load_journal", {"run_id": run_id}, "load_journal")
        return await self._journal_entries(run_id, rows, values=values)

    async def _read_histories(self, run_ids: list[str]) -> tuple[list[Row], list[Row]]:
        ids = {"ids": run_ids}

        def read() -> Operation[tuple[list[Row], list[Row]]]:
            journal, attempts = yield Batch(
                [Query("histories", ids), Query("histories_attempts", ids)]
            )
            return journal.rows, attempts.rows

        return await self.db.read(read, "read_histories")

    async def load_attempts(self, run_id: str) -> list[Attempt]:
        rows = await self._one("load_attempts", {"run_id": run_id}, "load_attempts")
        return self._attempts(run_id, rows)

    def _record(
        self, run_id: str, entries: list[dict[str, Any]], attempts: list[dict[str, Any]]
    ) -> Operation[None]:
        """Insert journal entries and attempts. A position already recorded is fine if it holds
        exactly this entry (a write retried after its answer was lost), else CorruptJournal."""
        inserted: list[Result] = yield Batch(
            [
                *(Query("insert_entry", params) for params in entries),
                *(Query("insert_attempt", params) for params in attempts),
            ]
        )
        for params, result in zip(entries, inserted, strict=False):
            if result.rowcount == 0:  # the position is taken (ON CONFLICT DO NOTHING)
                existing = (yield Query("entry_at", params)).first
                check_same_entry(run_id, params, existing, self.values)

    async def append(
        self, run_id: str, lease: Lease, *, entries: list[JournalEntry], attempts: list[Attempt]
    ) -> None:
        entry_params = await self._entry_params(run_id, entries)
        attempt_params = [self._attempt_params(a) for a in attempts]
        if len(entry_params) == 1 and not attempt_params:
            # the common case (a step's record): one statement fenced by the lease
            fenced = {**entry_params[0], "lease": lease.number, "worker_id": lease.worker_id}
            fast = self.db.fast
            if await (fast.append_one(fenced) if fast else self._append_fenced(fenced)):
                return  # else the operation below says why not

        def append() -> Operation[None]:
            check_held(run_id, (yield Query("check_lease", {"id": run_id})).first, lease)
            yield from self._record(run_id, entry_params, attempt_params)

        await self.db.write(append, "append")

    def _append_fenced(self, fenced: dict[str, Any]) -> Awaitable[bool]:
        """One journal entry, fenced by the lease in the statement; True when inserted."""

        def append() -> Operation[bool]:
            results: list[Result] = yield Last([Query("append_entry_fenced", fenced)])
            return results[0].rowcount == 1

        return self.db.write(append, "append")

    async def finish_attempt(
        self,
        run_id: str,
        lease: Lease,
        transition: Transition,
        *,
        entries: list[JournalEntry],
        attempts: list[Attempt],
    ) -> None:
        entry_params = await self._entry_params(run_id, entries)
        params, attempt_params, topics = await self._finish_params(
            run_id, lease, transition, attempts
        )
        cancelled = transition.status is RunStatus.CANCELLED
        follower = transition.continue_as
        follower_params = None
        if follower is not None:  # (continue_as_new) the next run, in the same transaction
            follower_params = await self._new_run_params(follower, self.now())
            topics = [*topics, CLAIMABLE]
        fast = self.db.fast
        # a task retry also drops entries, a cancel cancels the children, a continue-as-new
        # inserts a run: the shared way
        if (
            fast is not None
            and not transition.next_attempt
            and not cancelled
            and follower is None
            and await fast.finish(params, entry_params, attempt_params, topics)
        ):
            return  # else the shared operation says why not

        def finish() -> Operation[None]:
            if (yield Query("finish_attempt", params)).rowcount != 1:
                raise refused_finish(run_id, (yield Query("check_lease", params)).first, lease)
            yield from self._record(run_id, entry_params, attempt_params)
            if transition.next_attempt:
                yield Query("drop_failed_entries", {"run_id": run_id})
            if cancelled:  # its children go with it
                yield from self._cancel_tree(params)
            if follower_params is not None:
                yield from insert_run(follower_params)
                link = {"id": run_id, "continued_as": follower_params["id"]}
                yield Query("set_continued_as", link)

        await self.db.write(finish, "finish_attempt", topics)

    @staticmethod
    def _cancel_tree(params: dict[str, Any]) -> Operation[None]:
        """The run and its descendants: those not running end at once, the running ones are
        asked to stop. The tree is locked first: a run changing meanwhile (suspending, ending)
        is waited for, then seen as it is."""
        yield Batch([Query(name, params) for name in ("lock_tree", "cancel_idle_tree")])
        yield Query("request_cancel_tree", params)

    async def cancel_run(self, run_id: str) -> RunStatus:
        params = {"id": run_id, "now": self.now()}

        def cancel() -> Operation[RunStatus]:
            yield from self._cancel_tree(params)
            row = (yield Query("check_lease", params)).first
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self.db.where}")
            return RunStatus(row["status"])

        return await self.db.write(cancel, "cancel_run", (run_topic(run_id), CANCEL, CLAIMABLE))

    async def cancel_requests(self, worker_id: str) -> list[tuple[str, int]]:
        rows = await self._one("cancel_requests", {"worker_id": worker_id}, "cancel_requests")
        return [(row["id"], row["lease"]) for row in rows]

    # -- queues ------------------------------------------------------------------------------

    async def declare_queues(self, app: str, queues: list[QueueConfig]) -> None:
        now = self.now()
        batch = Batch(Query("declare_queue", self._queue_params(app, q, now)) for q in queues)

        def declare() -> Operation[None]:
            yield batch

        await self.db.write(declare, "declare_queues", (CLAIMABLE,))
        self._queue_cache.pop(app, None)

    async def set_queue(
        self,
        app: str,
        name: str,
        *,
        concurrency: int | None = None,
        unlimited: bool = False,
        paused: bool | None = None,
    ) -> QueueConfig:
        params = set_queue_params(app, name, concurrency, unlimited, paused, self.now())

        def change() -> Operation[Row]:
            result: Result = yield Query("set_queue", params)
            return result.rows[0]

        row = await self.db.write(change, "set_queue", (CLAIMABLE,))
        self._queue_cache.pop(app, None)
        return self._queue_config(row)

    async def queue_stats(self, app: str | None = None) -> list[QueueStats]:
        rows = await self._one("queue_stats", {"app": app, "now": self.now()}, "queue_stats")
        return [self._queue_stats(row) for row in rows]

    async def expire_runs(self) -> int:
        return await self._count("expire_runs", {"app": None, "now": self.now()}, (CLAIMABLE,))

    async def refresh_statistics(self) -> bool:
        if self._analyzed:
            return False
        enough = {"enough": _STATISTICS_AFTER}
        if not (await self._one("runs_lack_statistics", enough, "statistics"))[0]["lacking"]:
            return False
        await self._count("analyze_runs", {})
        self._analyzed = True
        return True

    # -- retention ---------------------------------------------------------------------------

    async def purge_runs(
        self,
        *,
        finished_before: float,
        statuses: Collection[RunStatus],
        app: str | None = None,
        limit: int = 500,
        dry_run: bool = False,
    ) -> list[str]:
        params = purge_params(finished_before, statuses, app, limit)
        if dry_run:
            return [row["id"] for row in await self._one("purgeable_runs", params, "purge_runs")]

        def purge() -> Operation[list[str]]:
            ids = [row["id"] for row in (yield Query("purgeable_runs", params)).rows]
            doomed = {"ids": ids}
            yield Batch(Query(name, doomed) for name in _RUN_PARTS)
            yield Query("delete_events", params)  # (then no kept wait can name them)
            return ids

        return await self.db.write(purge, "purge_runs")

    async def reencrypt_values(
        self, *, after: str = "", limit: int = 200
    ) -> tuple[int, str | None]:
        rows = await self._one("run_ids_after", {"after": after, "limit": limit}, "reencrypt")
        ids = [row["id"] for row in rows]
        last = ids[-1] if len(ids) == limit else None  # the last walk takes all that is left
        params = {"ids": ids, "after": after, "last": last}
        rewrites = self.values.rotated(await self._one("inline_values_of", params, "reencrypt"))

        def rewrite() -> Operation[int]:
            done = yield Batch(Query(f"rewrite_{r['col']}", r) for r in rewrites)
            return sum(result.rowcount for result in done)

        return (await self.db.write(rewrite, "reencrypt") if rewrites else 0), last

    async def reclaim(self) -> None:
        await self.db.vacuum()

    async def referenced_blobs(self, keys: list[str]) -> set[str]:
        rows = await self._one("referenced_blobs", {"keys": keys}, "referenced_blobs")
        return {row["key"] for row in rows}

    # -- change notification -----------------------------------------------------------------

    def change_token(self) -> ChangeToken:
        return self.db.notifier.token()

    def changed_since(self, since: ChangeToken, topics: Collection[str] | None = None) -> bool:
        return self.db.notifier.changed(since, None if topics is None else frozenset(topics))

    async def wait_for_change(
        self,
        timeout: float,
        *,
        topics: Collection[str] | None = None,
        since: ChangeToken | None = None,
        wake: asyncio.Future[None] | None = None,
    ) -> bool:
        await self.db.watch()
        notifier = self.db.notifier
        wanted = None if topics is None else frozenset(topics)
        start = notifier.token() if since is None else since
        return await notifier.wait(start, wanted, timeout, wake)
