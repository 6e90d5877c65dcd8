"""The production store: PostgreSQL through psycopg 3 (async) and psycopg_pool.

Tables live in the schema `perdure`. Claims use `FOR UPDATE SKIP LOCKED`, so many workers never
wait on each other. Every write announces what it changed with `pg_notify('perdure', topic)` in
its own transaction; one LISTEN connection per process turns those into wake-ups, so a trigger
made anywhere reaches an idle worker without polling. Connections, retries, LISTEN and the
workers' session locks are in pg_connections.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from perdure.blobs.base import BlobStore
from perdure.crypto import Keyring
from perdure.errors import (
    RunNotFound,
    SchemaOutdated,
    SchemaTooNew,
    StoreUnavailable,
)
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
    WorkerRecord,
)
from perdure.store.admission import (
    CANDIDATE_SCAN,
    Turns,
    admit,
    limits_apply,
    rate_window,
)
from perdure.store.base import ChangeToken, trigger_timeout
from perdure.store.notify import CANCEL, CLAIMABLE, ChangeNotifier, run_topic
from perdure.store.pg_connections import (
    LOCK_CLASS,
    SCHEMA,
    Conn,
    PostgresConnections,
    session_key,
    translate,
)
from perdure.store.queries import load_migrations, load_queries
from perdure.store.rows import (
    UNKNOWN,
    RecentResults,
    RowMapping,
    check_held,
    check_same_entry,
    purge_params,
    refused_finish,
    set_queue_params,
    wake_time,
)

log = logging.getLogger("perdure.store")

_ENTRY_COLUMNS = (
    ("seq", "integer"),
    ("kind", "text"),
    ("name", "text"),
    ("status", "text"),
    ("codec", "text"),
    ("value", "bytea"),
    ("blob_key", "text"),
    ("raw_size", "bigint"),
    ("stored_size", "bigint"),
    ("error", "bytea"),
    ("started_at", "float8"),
    ("finished_at", "float8"),
    ("run_attempt", "integer"),
    ("attempt", "integer"),
    ("attempt_started_at", "float8"),
)
_ATTEMPT_COLUMNS = (
    ("run_attempt", "integer"),
    ("seq", "integer"),
    ("attempt", "integer"),
    ("started_at", "float8"),
    ("finished_at", "float8"),
    ("error", "bytea"),
)
Columns = tuple[tuple[str, str], ...]


def _rows_sql(prefix: str, columns: Columns, count: int) -> str:
    """A query yielding `count` rows of parameters named PREFIX+column: none, one row of
    scalars, or one array per column. Arrays cost far more to send than scalars (psycopg
    inspects each list), and most finishes carry one row or none."""
    if count == 0:
        return (
            "SELECT "
            + ", ".join(f"NULL::{kind} AS {name}" for name, kind in columns)
            + (" WHERE false")
        )
    if count == 1:
        return "SELECT " + ", ".join(
            f"%({prefix}{name})s::{kind} AS {name}" for name, kind in columns
        )
    arrays = ", ".join(f"%({prefix}{name})s::{kind}[]" for name, kind in columns)
    return f"SELECT * FROM unnest({arrays}) AS r({', '.join(name for name, _ in columns)})"


def _rows_params(prefix: str, columns: Columns, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of _rows_sql(prefix, columns, len(rows))."""
    if len(rows) == 1:
        return {f"{prefix}{name}": rows[0][name] for name, _ in columns}
    return {f"{prefix}{name}": [row[name] for row in rows] for name, _ in columns}


_FINISH_COLUMNS = (
    "id",
    "lease",
    "worker_id",
    "status",
    "available_at",
    "children_target",
    "result_codec",
    "result",
    "result_blob",
    "result_raw_size",
    "result_stored_size",
    "error",
    "bump",
    "now",
    "finished_at",
    "note",
)
_RUN_ENTRY_COLUMNS = (("run_id", "text"), *_ENTRY_COLUMNS)
_RUN_ATTEMPT_COLUMNS = (("run_id", "text"), *_ATTEMPT_COLUMNS)


@dataclass(slots=True)
class _Finish:
    """One run's completion waiting for its group's statement."""

    params: dict[str, Any]
    entries: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    topics: list[str]


Item = TypeVar("Item")
Group = list[tuple[Item, "asyncio.Future[bool]"]]
"""Writes submitted in one event-loop iteration, each with the future its writer awaits."""


@functools.cache
def finish_many_statement(entries: int, attempts: int) -> str:
    """finish_many for this many entries and attempts in all (2 stands for "several")."""
    return (
        Q["finish_many"]
        .replace("/* entries */", _rows_sql("e_", _RUN_ENTRY_COLUMNS, entries))
        .replace("/* attempts */", _rows_sql("a_", _RUN_ATTEMPT_COLUMNS, attempts))
    )


@functools.cache
def finish_statement(entries: int, attempts: int) -> str:
    """finish_attempt_at_once for this many entries and attempts (2 stands for "several")."""
    return (
        Q["finish_attempt_at_once"]
        .replace("/* entries */", _rows_sql("e_", _ENTRY_COLUMNS, entries))
        .replace("/* attempts */", _rows_sql("a_", _ATTEMPT_COLUMNS, attempts))
    )


Q = load_queries("postgres")
MIGRATIONS = load_migrations("postgres")
SCHEMA_VERSION = MIGRATIONS[-1][0]
_MIGRATION_LOCK = 7_366_101  # pg_advisory_xact_lock key: one migrator at a time
_CLAIM_LOCK_CLASS = 7_366_103  # pg_advisory_xact_lock(class, app hash): one limited claim at a time
_QUEUES_FRESH_FOR = 1.0  # seconds a worker trusts its copy of the queues to pick the claim path
SESSION_GRACE = 10.0  # seconds after a server start during which missing locks prove nothing
_CLOCK_READ_QUICK = 0.05  # seconds: a clock reading answered within this sets the offset


class PostgresStore(RowMapping, PostgresConnections):
    """`Store` on PostgreSQL."""

    listen_notify = True
    """Capability: the server pushes wake-ups (LISTEN/NOTIFY)."""
    skip_locked = True
    """Capability: claims skip rows other workers are claiming."""
    session_liveness = True
    """Capability: a worker holds an advisory lock in a session of its own while it lives, so
    its death (its connection closed by the kernel) is visible to every other worker at once."""

    def __init__(
        self,
        url: str,
        *,
        blobs: BlobStore,
        inline_limit: int,
        auto_migrate: bool = True,
        pool_size: int = 10,
        retry_for: float = 300.0,
        keyring: Keyring | None = None,
    ) -> None:
        self.url = url
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.keyring = keyring
        self.auto_migrate = auto_migrate
        self.pool_size = pool_size
        self.retry_for = retry_for
        self._notifier = ChangeNotifier()
        self._recent = RecentResults()
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Conn]] = {}
        self._listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._session_locks: dict[str, psycopg.Connection[Any]] = {}
        self._append_groups: dict[asyncio.AbstractEventLoop, Group[dict[str, Any]]] = {}
        self._finish_groups: dict[asyncio.AbstractEventLoop, Group[_Finish]] = {}
        self._group_tasks: set[asyncio.Task[None]] = set()
        self.grouped_appends = 0
        """Step records written through group commit (for tests and stats)."""
        self.append_groups = 0
        self.grouped_finishes = 0
        """Completions sent in groups, and how many groups (see _grouped_finish)."""
        self.finish_groups = 0
        """Transactions those records took."""
        self._opened = False
        self._clock_offset = 0.0
        """The server's clock minus this process's (see now())."""
        self._queue_cache: dict[str, tuple[float, dict[str, QueueConfig]]] = {}
        self._turns = Turns()

    # -- lifecycle and schema ----------------------------------------------------------------

    async def _version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present", (f"{SCHEMA}.schema_version",)
        )
        row = await cur.fetchone()
        if not row or not row["present"]:
            return 0
        cur = await conn.execute(f"SELECT max(version) AS v FROM {SCHEMA}.schema_version")
        row = await cur.fetchone()
        return int(row["v"] or 0) if row else 0

    def _pending(self, version: int, target: int | None = None) -> list[tuple[int, str, str]]:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {self._redacted()} has schema version {version}, but this perdure "
                f"knows versions up to {SCHEMA_VERSION}; upgrade perdure"
            )
        return [m for m in MIGRATIONS if version < m[0] <= (target or SCHEMA_VERSION)]

    async def _migrate(self, *, dry_run: bool, target: int | None = None) -> list[str]:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, row_factory=dict_row)
        except psycopg.Error as exc:
            raise translate(exc, "connect", first_connect=not self._opened) from exc
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                pending = self._pending(await self._version(conn), target)
                if dry_run:
                    return [name for _v, name, _sql in pending]
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                await conn.execute(f"SET LOCAL search_path = {SCHEMA}")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                for version, name, sql in pending:
                    await conn.execute(sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                return [name for _v, name, _sql in pending]
        finally:
            await conn.close()

    def now(self) -> float:
        return time.time() + self._clock_offset

    def _observe_clock(self, sent: float, server_now: float) -> None:
        """A reading of the server's clock, taken between `sent` and now on this process's
        clock: the offset lies between server_now - now and server_now - sent. A quick reading
        sets it to the middle; a slow one only when the current estimate lies outside (the
        clocks jumped), since the event loop may have held the answer back."""
        received = time.time()
        low, high = server_now - received, server_now - sent
        if received - sent <= _CLOCK_READ_QUICK or not low <= self._clock_offset <= high:
            self._clock_offset = (low + high) / 2

    async def _read_clock(self) -> None:
        # twice: the first reading also opens this loop's first connection, so it is slow and
        # sets the offset only if the clocks are far apart; the second is quick
        for _ in range(2):
            sent = time.time()
            rows = await self._read(Q["clock"], {}, "clock")
            self._observe_clock(sent, rows[0]["server_now"])

    async def open(self) -> None:
        if self._opened:
            return
        pending = await self._migrate(dry_run=True)
        if pending and not self.auto_migrate:
            raise SchemaOutdated(
                f"database {self._redacted()} needs migrations {', '.join(pending)}; "
                "run `perdure migrate`"
            )
        if pending:
            applied = await self._migrate(dry_run=False)
            if applied:
                log.info("migrated %s: %s", self._redacted(), ", ".join(applied))
        self._opened = True
        await self._read_clock()

    async def close(self) -> None:
        for worker_id in list(self._session_locks):
            await asyncio.to_thread(self._unlock_session, worker_id)
        await self.detach()
        self._pools.clear()  # other loops' pools end with their loops
        self._listeners.clear()
        self._opened = False

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        return await self._migrate(dry_run=dry_run, target=target)

    # -- runs --------------------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[str, bool]:
        params = await self._new_run_params(run, self.now())
        if run.debounce_key is not None:
            (created,) = await self.create_runs([run])
            return created

        async def attempt() -> tuple[str, bool]:
            async with self._connection("create_run", transaction=False) as conn:
                if await (await conn.execute(Q["insert_run_notify"], params)).fetchone():
                    return run.id, True
                row = await (await conn.execute(Q["run_by_idempotency_key"], params)).fetchone()
                assert row is not None
                return str(row["id"]), row["id"] == run.id

        created = await self._retrying("create_run", attempt, give_up_after=trigger_timeout())
        self._notifier.notify({CLAIMABLE})
        return created

    async def create_runs(self, runs: list[NewRun]) -> list[tuple[str, bool]]:
        if len(runs) == 1 and runs[0].debounce_key is None:
            return [await self.create_run(runs[0])]  # one statement, no transaction
        now = self.now()
        # large arguments go to the blob store side by side
        all_params = await asyncio.gather(*(self._new_run_params(run, now) for run in runs))

        async def work(conn: Conn) -> list[tuple[str, bool]]:
            out = []
            for params in all_params:
                if params["debounce_key"] is not None:
                    row = await (await conn.execute(Q["upsert_debounced_run"], params)).fetchone()
                    assert row is not None
                    out.append((str(row["id"]), row["id"] == params["id"]))
                elif (await conn.execute(Q["insert_run"], params)).rowcount == 1:
                    out.append((params["id"], True))
                else:
                    cur = await conn.execute(Q["run_by_idempotency_key"], params)
                    row = await cur.fetchone()
                    assert row is not None
                    out.append((str(row["id"]), row["id"] == params["id"]))
            return out

        return await self._write("create_runs", work, (CLAIMABLE,), give_up_after=trigger_timeout())

    async def get_run(self, run_id: str, *, values: bool = True) -> RunRecord:
        rows = await self._read(Q["get_run"], {"id": run_id}, "get_run")
        if not rows:
            raise RunNotFound(f"no run with id {run_id!r} in {self._redacted()}")
        return await self._run_record(rows[0], full=True, fetch=values)

    async def get_runs(self, run_ids: list[str]) -> list[RunRecord]:
        rows = await self._read(Q["get_runs"], {"ids": run_ids}, "get_runs")
        return await self._in_order(run_ids, rows)

    async def list_runs(
        self, *, status: RunStatus | None = None, task: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        rows = await self._read(
            Q["list_runs"],
            {"status": None if status is None else str(status), "task": task, "limit": limit},
            "list_runs",
        )
        return [await self._run_record(row, full=False) for row in rows]

    async def claim_runs(
        self,
        *,
        app: str,
        worker_id: str,
        tasks: list[str],
        limit: int,
        task_limits: dict[str, int] | None = None,
    ) -> Claimed:
        now = self.now()
        params = {
            "app": app,
            "worker_id": worker_id,
            "tasks": tasks,
            "limit": limit,
            "now": now,
            "lock_class": _CLAIM_LOCK_CLASS,
        }
        queues = await self._queues(app)
        if not limits_apply(queues, task_limits or {}):

            async def attempt() -> tuple[list[dict[str, Any]], float | None, float | None]:
                # a claim need not wait for its WAL flush (losing one only means the run is
                # claimed again), and the pipeline sends the statements together, with the
                # look at what is left (the worker's next read)
                async with (
                    self._connection("claim_runs", transaction=False) as conn,
                    conn.pipeline(),
                ):
                    async with conn.transaction():
                        await conn.execute("SET LOCAL synchronous_commit TO off")
                        await conn.execute(Q["expire_runs"], params)
                        cur = await conn.execute(Q["claim_runs"], params)
                        left = await conn.execute(Q["next_wake_at"], params)
                    return await cur.fetchall(), None, wake_time(await left.fetchall())

            rows, retry_at, next_at = await self._retrying("claim_runs", attempt)
            return await self._claimed(rows, retry_at, next_at)

        async def limited() -> tuple[list[dict[str, Any]], float | None]:
            async with (
                self._connection("claim_runs", transaction=False) as conn,
                conn.pipeline(),
                conn.transaction(),
            ):
                return await self._admit_and_claim(conn, params, task_limits or {})

        rows, retry_at = await self._retrying("claim_runs", limited)
        return await self._claimed(rows, retry_at, UNKNOWN)

    async def _admit_and_claim(
        self, conn: Conn, params: dict[str, Any], task_limits: dict[str, int]
    ) -> tuple[list[dict[str, Any]], float | None]:
        """The claim when limits apply, under the app's claim lock: what is read here is what
        every earlier claim of the app committed."""
        now = params["now"]
        await conn.execute("SET LOCAL synchronous_commit TO off")
        await conn.execute(Q["claim_lock"], params)
        await conn.execute(Q["expire_runs"], params)
        fresh = await conn.execute(Q["app_queues"], params)
        scan = {**params, "scan": params["limit"] + CANDIDATE_SCAN}
        candidates = await conn.execute(Q["claim_candidates"], scan)
        running = await conn.execute(Q["running_runs"], params)
        queues = {row["name"]: self._queue_config(row) for row in await fresh.fetchall()}
        window = rate_window(queues)
        starts: list[dict[str, Any]] = []
        if window:
            cur = await conn.execute(Q["recent_starts"], {**params, "since": now - window})
            starts = await cur.fetchall()
        admission = admit(
            await candidates.fetchall(),
            await running.fetchall(),
            starts,
            queues,
            task_limits,
            params["limit"],
            now,
            self._turns,
        )
        for query, ids, more in admission.cancellations(now):
            await conn.execute(Q[query], {**more, "ids": ids})
        cur = await conn.execute(Q["claim_ids"], {**params, "ids": admission.claim})
        return await cur.fetchall(), admission.retry_at

    async def _queues(self, app: str) -> dict[str, QueueConfig]:
        """The app's queues, read at most once a second (to pick the claim path; the limited
        path reads them again under its lock)."""
        cached = self._queue_cache.get(app)
        if cached is not None and time.monotonic() - cached[0] < _QUEUES_FRESH_FOR:
            return cached[1]
        rows = await self._read(Q["app_queues"], {"app": app}, "app_queues")
        queues = {row["name"]: self._queue_config(row) for row in rows}
        self._queue_cache[app] = (time.monotonic(), queues)
        return queues

    async def next_wake_at(self, *, app: str, tasks: list[str]) -> float | None:
        return wake_time(
            await self._read(Q["next_wake_at"], {"app": app, "tasks": tasks}, "next_wake_at")
        )

    # -- journal -----------------------------------------------------------------------------

    async def load_journal(self, run_id: str, *, values: bool = True) -> list[JournalEntry]:
        rows = await self._read(Q["load_journal"], {"run_id": run_id}, "load_journal")
        return await self._journal_entries(run_id, rows, values=values)

    async def _read_histories(
        self, run_ids: list[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async def attempt() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with (
                self._connection("read_histories", transaction=False) as conn,
                conn.pipeline(),
            ):
                journal = await conn.execute(Q["histories"], {"ids": run_ids})
                attempts = await conn.execute(Q["histories_attempts"], {"ids": run_ids})
                return await journal.fetchall(), await attempts.fetchall()

        return await self._retrying("read_histories", attempt)

    async def load_attempts(self, run_id: str) -> list[Attempt]:
        rows = await self._read(Q["load_attempts"], {"run_id": run_id}, "load_attempts")
        return self._attempts(run_id, rows)

    async def _insert_entries(
        self, conn: Conn, run_id: str, entry_params: list[dict[str, Any]]
    ) -> None:
        for params in entry_params:
            inserted = await (await conn.execute(Q["insert_entry"], params)).fetchone()
            if inserted is None:  # the position is taken (ON CONFLICT DO NOTHING)
                existing = await (await conn.execute(Q["entry_at"], params)).fetchone()
                check_same_entry(run_id, params, existing, None, self.keyring)

    async def append(
        self, run_id: str, lease: Lease, *, entries: list[JournalEntry], attempts: list[Attempt]
    ) -> None:
        entry_params = await self._entry_params(run_id, entries)
        attempt_params = [self._attempt_params(a) for a in attempts]

        async def work(conn: Conn) -> None:
            cur = await conn.execute(Q["check_lease"], {"id": run_id})
            check_held(run_id, await cur.fetchone(), lease)
            await self._insert_entries(conn, run_id, entry_params)
            for params in attempt_params:
                await conn.execute(Q["insert_attempt"], params)

        if len(entry_params) == 1 and not attempt_params:
            # the common case (a step's record): one statement, one round trip
            params = {**entry_params[0], "lease": lease.number, "worker_id": lease.worker_id}

            async def one() -> None:
                if await self._grouped_append(params):
                    return
                await self._write("append", work)  # find out why, in a transaction

            await self._retrying("append", one)
            return

        await self._write("append", work)

    async def _in_group(
        self,
        groups: dict[asyncio.AbstractEventLoop, Group[Item]],
        item: Item,
        commit: Callable[[Group[Item]], Awaitable[None]],
    ) -> bool:
        """Group commit: the writes submitted in one event-loop iteration go to the server
        together, by `commit`, once the iteration is over; it resolves each write's future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        group = groups.get(loop)
        if group is None:
            group = groups[loop] = []
            loop.call_soon(
                lambda: self._group_tasks.add(loop.create_task(self._send(groups, loop, commit)))
            )
        group.append((item, fut))
        return await fut

    async def _send(
        self,
        groups: dict[asyncio.AbstractEventLoop, Group[Item]],
        loop: asyncio.AbstractEventLoop,
        commit: Callable[[Group[Item]], Awaitable[None]],
    ) -> None:
        try:
            await commit(groups.pop(loop, []))
        finally:
            self._group_tasks.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]

    async def _grouped_append(self, params: dict[str, Any]) -> bool:
        """The step records of one event-loop iteration in one transaction with one commit
        (alone: one autocommit statement). True when the entry was inserted."""
        return await self._in_group(self._append_groups, params, self._commit_appends)

    async def _commit_appends(self, group: Group[dict[str, Any]]) -> None:
        try:
            async with self._connection("append", transaction=False) as conn:
                if len(group) == 1:
                    cur = await conn.execute(Q["append_entry_fenced"], group[0][0])
                    inserted = [await cur.fetchone() is not None]
                else:
                    async with conn.pipeline():
                        async with conn.transaction():
                            cursors = [
                                await conn.execute(Q["append_entry_fenced"], params)
                                for params, _ in group
                            ]
                        inserted = [await cur.fetchone() is not None for cur in cursors]
        except Exception as exc:
            for _params, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.grouped_appends += len(group)
        self.append_groups += 1
        for (_params, fut), ok in zip(group, inserted, strict=True):
            if not fut.done():
                fut.set_result(ok)

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

        async def work(conn: Conn) -> None:
            cur = await conn.execute(Q["finish_attempt"], params)
            if cur.rowcount != 1:
                row = await (await conn.execute(Q["check_lease"], params)).fetchone()
                raise refused_finish(run_id, row, lease)
            await self._insert_entries(conn, run_id, entry_params)
            for one in attempt_params:
                await conn.execute(Q["insert_attempt"], one)
            if transition.next_attempt:
                await conn.execute(Q["drop_failed_entries"], {"run_id": run_id})
            if transition.status is RunStatus.CANCELLED:  # its children go with it
                await conn.execute(Q["lock_tree"], params)
                await conn.execute(Q["cancel_idle_tree"], params)
                await conn.execute(Q["request_cancel_tree"], params)

        # a task retry also drops entries, a cancel cancels the children: step by step
        if not transition.next_attempt and transition.status is not RunStatus.CANCELLED:

            async def grouped() -> bool:
                return await self._grouped_finish(params, entry_params, attempt_params, topics)

            if await self._retrying("finish_attempt", grouped):
                self._completed(run_id, transition)
                self._notifier.notify(set(topics))
                return
        await self._write("finish_attempt", work, topics)
        self._completed(run_id, transition)  # the waiters woken by the commit run after this

    async def _grouped_finish(
        self,
        params: dict[str, Any],
        entries: list[dict[str, Any]],
        attempts: list[dict[str, Any]],
        topics: list[str],
    ) -> bool:
        """The completions of one event-loop iteration in one statement (alone:
        finish_attempt_at_once). True when the run was finished; False sends it down the
        step-by-step path, which says why not."""
        finish = _Finish(params, entries, attempts, topics)
        return await self._in_group(self._finish_groups, finish, self._commit_finishes)

    async def _commit_finishes(self, group: Group[_Finish]) -> None:
        finished: set[str] = set()
        try:
            async with self._connection("finish_attempt", transaction=False) as conn:
                if len(group) == 1:
                    ((one, _fut),) = group
                    statement = finish_statement(
                        min(len(one.entries), 2), min(len(one.attempts), 2)
                    )
                    cur = await conn.execute(
                        statement,
                        {
                            **one.params,
                            **_rows_params("e_", _ENTRY_COLUMNS, one.entries),
                            **_rows_params("a_", _ATTEMPT_COLUMNS, one.attempts),
                            "topics": one.topics,
                        },
                    )
                    row = await cur.fetchone()
                    if row and row["finished"]:
                        finished.add(one.params["id"])
                else:
                    finished = await self._finish_many(conn, [one for one, _fut in group])
        except StoreUnavailable as exc:  # each retries
            for _one, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            # one run's trouble must not fail the others: each takes the step-by-step path
            log.warning("grouped completion failed (%s); finishing one by one", exc)
        self.grouped_finishes += len(group)
        self.finish_groups += 1
        for one, fut in group:
            if not fut.done():
                fut.set_result(one.params["id"] in finished)

    @staticmethod
    async def _finish_many(conn: Conn, group: list[_Finish]) -> set[str]:
        """finish_many for `group`; the ids of the runs it finished."""
        entries = [entry for one in group for entry in one.entries]
        attempts = [attempt for one in group for attempt in one.attempts]
        params = {
            **{f"f_{name}": [one.params[name] for one in group] for name in _FINISH_COLUMNS},
            **_rows_params("e_", _RUN_ENTRY_COLUMNS, entries),
            **_rows_params("a_", _RUN_ATTEMPT_COLUMNS, attempts),
            "t_run": [one.params["id"] for one in group for _ in one.topics],
            "t_topic": [topic for one in group for topic in one.topics],
        }
        statement = finish_many_statement(min(len(entries), 2), min(len(attempts), 2))
        cur = await conn.execute(statement, params)
        return {str(row["id"]) for row in await cur.fetchall()}

    async def cancel_run(self, run_id: str) -> RunStatus:
        params = {"id": run_id, "now": self.now()}

        async def work(conn: Conn) -> RunStatus:
            await conn.execute(Q["lock_tree"], params)
            await conn.execute(Q["cancel_idle_tree"], params)
            await conn.execute(Q["request_cancel_tree"], params)
            row = await (await conn.execute(Q["check_lease"], params)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self._redacted()}")
            return RunStatus(row["status"])

        return await self._write("cancel_run", work, (run_topic(run_id), CANCEL, CLAIMABLE))

    # -- queues ------------------------------------------------------------------------------

    async def declare_queues(self, app: str, queues: list[QueueConfig]) -> None:
        now = self.now()
        all_params = [self._queue_params(app, queue, now) for queue in queues]

        async def work(conn: Conn) -> None:
            for params in all_params:
                await conn.execute(Q["declare_queue"], params)

        await self._write("declare_queues", work, (CLAIMABLE,))
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
        params = set_queue_params(app, name, concurrency, unlimited, paused)

        async def work(conn: Conn) -> dict[str, Any]:
            row = await (await conn.execute(Q["set_queue"], params)).fetchone()
            assert row is not None
            return row

        row = await self._write("set_queue", work, (CLAIMABLE,))
        self._queue_cache.pop(app, None)
        return self._queue_config(row)

    async def queue_stats(self, app: str | None = None) -> list[QueueStats]:
        rows = await self._read(Q["queue_stats"], {"app": app, "now": self.now()}, "queue_stats")
        return [self._queue_stats(row) for row in rows]

    async def expire_runs(self) -> int:
        params = {"app": None, "now": self.now()}

        async def work(conn: Conn) -> int:
            return (await conn.execute(Q["expire_runs"], params)).rowcount

        return await self._write("expire_runs", work, (CLAIMABLE,))

    async def cancel_requests(self, worker_id: str) -> list[tuple[str, int]]:
        rows = await self._read(Q["cancel_requests"], {"worker_id": worker_id}, "cancel_requests")
        return [(row["id"], row["lease"]) for row in rows]

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
            rows = await self._read(Q["purgeable_runs"], params, "purge_runs")
            return [row["id"] for row in rows]

        async def work(conn: Conn) -> list[str]:
            rows = await (await conn.execute(Q["purgeable_runs"], params)).fetchall()
            ids = [row["id"] for row in rows]
            for query in ("delete_journals", "delete_attempts", "delete_runs"):
                await conn.execute(Q[query], {"ids": ids})
            return ids

        return await self._write("purge_runs", work)

    async def reencrypt_values(
        self, *, after: str = "", limit: int = 200
    ) -> tuple[int, str | None]:
        rows = await self._read(Q["run_ids_after"], {"after": after, "limit": limit}, "reencrypt")
        ids = [row["id"] for row in rows]
        if not ids:
            return 0, None
        rewrites = self._rotated(await self._read(Q["inline_values_of"], {"ids": ids}, "reencrypt"))

        async def work(conn: Conn) -> int:
            count = 0
            for r in rewrites:
                count += (await conn.execute(Q[f"rewrite_{r['col']}"], r)).rowcount
            return count

        return (await self._write("reencrypt", work) if rewrites else 0), ids[-1]

    async def reclaim(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise translate(exc, "reclaim") from exc
        try:
            await conn.execute(f"VACUUM {SCHEMA}.runs, {SCHEMA}.journal, {SCHEMA}.attempts")
        except psycopg.Error as exc:
            raise translate(exc, "reclaim") from exc
        finally:
            await conn.close()

    async def referenced_blobs(self, keys: list[str]) -> set[str]:
        rows = await self._read(Q["referenced_blobs"], {"keys": keys}, "referenced_blobs")
        return {row["key"] for row in rows}

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(self, worker: WorkerRecord) -> None:
        params = self._worker_params(worker)
        # the lock first: a registered worker without it would look dead to the others
        await asyncio.to_thread(self._lock_session, worker.id)

        async def work(conn: Conn) -> None:
            await conn.execute(Q["register_worker"], params)

        await self._write("register_worker", work)

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        sent = time.time()
        rows = await self._read(Q["session_locks"], {"lock_class": LOCK_CLASS}, "dead_sessions")
        self._observe_clock(sent, rows[0]["server_now"])
        held = set(rows[0]["held"])
        if session_key(me) not in held:
            # our own session is gone (the server restarted, or the network dropped): take the
            # lock again, and judge no one until we hold it
            if me in self._session_locks:
                await asyncio.to_thread(self._lock_session, me)
            return []
        if rows[0]["uptime"] < SESSION_GRACE:
            return []  # the server restarted: give every worker time to lock again
        return [w for w in worker_ids if session_key(w) not in held]

    async def heartbeat(self, worker_id: str) -> bool:
        sent = time.time()
        params = {"id": worker_id}

        async def work(conn: Conn) -> float | None:
            row = await (await conn.execute(Q["heartbeat"], params)).fetchone()
            return None if row is None else float(row["server_now"])

        server_now = await self._write("heartbeat", work)
        if server_now is None:
            return False
        self._observe_clock(sent, server_now)
        return True

    async def live_workers(self, *, app: str) -> list[WorkerRecord]:
        rows = await self._read(Q["live_workers"], {"app": app}, "live_workers")
        return [self._worker_record(row) for row in rows]

    async def reap_workers(self, worker_ids: list[str], *, reason: str) -> int:
        now = self.now()

        async def work(conn: Conn) -> int:
            requeued = 0
            for worker_id in worker_ids:
                await conn.execute(Q["mark_worker_dead"], {"id": worker_id, "status": "dead"})
                cur = await conn.execute(
                    Q["requeue_worker_runs"],
                    {
                        "worker_id": worker_id,
                        "now": now,
                        "note": f"requeued: worker {worker_id} {reason}",
                    },
                )
                requeued += cur.rowcount
            return requeued + (await conn.execute(Q["requeue_orphans"], {"now": now})).rowcount

        return await self._write("reap_workers", work, (CLAIMABLE,))

    async def deregister_worker(self, worker_id: str) -> None:
        params = {"id": worker_id, "status": "stopped"}

        async def work(conn: Conn) -> None:
            await conn.execute(Q["mark_worker_dead"], params)

        await self._write("deregister_worker", work)
        await asyncio.to_thread(self._unlock_session, worker_id)

    async def release_strays(self, worker_id: str, *, keep: list[str]) -> list[str]:
        params = {"worker_id": worker_id, "keep": keep, "now": self.now()}

        async def work(conn: Conn) -> list[str]:
            rows = await (await conn.execute(Q["release_strays"], params)).fetchall()
            await conn.execute(Q["requeue_orphans"], params)
            return [row["id"] for row in rows]

        return await self._write("release_strays", work, (CLAIMABLE,))

    async def note_unclaimable(self, *, app: str, tasks: list[str], note: str) -> int:
        params = {"app": app, "tasks": tasks, "note": note, "now": self.now()}

        async def work(conn: Conn) -> int:
            return (await conn.execute(Q["note_unclaimable"], params)).rowcount

        return await self._write("note_unclaimable", work)

    # -- change notification -----------------------------------------------------------------

    def change_token(self) -> ChangeToken:
        return self._notifier.token()

    def changed_since(self, since: ChangeToken, topics: Collection[str] | None = None) -> bool:
        return self._notifier.changed(since, None if topics is None else frozenset(topics))

    async def wait_for_change(
        self,
        timeout: float,
        *,
        topics: Collection[str] | None = None,
        since: ChangeToken | None = None,
    ) -> bool:
        if not self._opened:
            await self.open()
        self._ensure_listener()
        wanted = None if topics is None else frozenset(topics)
        return await self._notifier.wait(
            self._notifier.token() if since is None else since, wanted, timeout
        )
