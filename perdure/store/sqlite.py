"""The embedded store: one SQLite file in WAL mode with synchronous=FULL.

Writes go through one group-commit writer thread per process (see group_commit.py); reads use a
connection per thread and never wait for writers. Other processes on the same file are noticed
through `PRAGMA data_version`, polled every `poll_interval` seconds while someone waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

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
from perdure.store.group_commit import GroupCommitWriter
from perdure.store.notify import CANCEL, CLAIMABLE, ChangeNotifier, run_topic
from perdure.store.queries import load_migrations, load_queries
from perdure.store.rows import (
    UNKNOWN,
    RecentResults,
    RowMapping,
    Unknown,
    check_held,
    check_same_entry,
    purge_params,
    refused_finish,
    set_queue_params,
    wake_time,
)

log = logging.getLogger("perdure.store")

Q = load_queries("sqlite")
MIGRATIONS = load_migrations("sqlite")
SCHEMA_VERSION = MIGRATIONS[-1][0]
DEFAULT_INLINE_LIMIT = 256 * 1024


class SQLiteStore(RowMapping):
    """`Store` on a SQLite file."""

    listen_notify = False
    """Capability: no server push; other processes are noticed by polling data_version."""
    session_liveness = False
    """Capability: no database sessions to tell a dead worker by (the PID check does it)."""

    def __init__(
        self,
        path: str | Path,
        *,
        blobs: BlobStore,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        auto_migrate: bool = True,
        poll_interval: float = 0.01,
        keyring: Keyring | None = None,
    ) -> None:
        self.path = Path(path)
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.keyring = keyring
        self.auto_migrate = auto_migrate
        self.poll_interval = poll_interval
        self._notifier = ChangeNotifier()
        self._recent = RecentResults()
        self._local = threading.local()
        self._writer: GroupCommitWriter | None = None
        self._open_lock = threading.Lock()
        self._turns = Turns()

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _read(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        if self._writer is None:
            await self.open()
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"SQLite read failed on {self.path}: {exc}") from exc

    async def _write(
        self,
        write: Any,
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> Any:
        if self._writer is None:
            await self.open()
        assert self._writer is not None
        return await self._writer.submit(
            write, topics, durable=durable, give_up_after=give_up_after
        )

    # -- lifecycle and schema ----------------------------------------------------------------

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (once per file; it sticks; waits out busy_timeout)."""
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    def _version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _pending(self, version: int, target: int | None = None) -> list[tuple[int, str, str]]:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {self.path} has schema version {version}, but this perdure knows "
                f"versions up to {SCHEMA_VERSION}; upgrade perdure"
            )
        return [m for m in MIGRATIONS if version < m[0] <= (target or SCHEMA_VERSION)]

    def _apply(
        self, conn: sqlite3.Connection, dry_run: bool, target: int | None = None
    ) -> list[str]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            pending = self._pending(self._version(conn), target)
            if not dry_run:
                for version, _name, sql in pending:
                    for statement in _statements(sql):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [name for _v, name, _sql in pending]

    async def open(self) -> None:
        with self._open_lock:
            if self._writer is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                self._use_wal(conn)
                pending = self._pending(self._version(conn))
                if pending and not self.auto_migrate:
                    raise SchemaOutdated(
                        f"database {self.path} is at schema version {self._version(conn)}, "
                        f"this perdure needs {SCHEMA_VERSION}; run `perdure migrate`"
                    )
                if pending:
                    applied = self._apply(conn, dry_run=False)
                    if applied:
                        log.info("migrated %s: %s", self.path, ", ".join(applied))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
            finally:
                conn.close()
            writer = GroupCommitWriter(
                self._connect,
                on_commit=self._notifier.notify,
                poll_interval=self.poll_interval,
                path=self.path,
            )
            writer.start()
            self._writer = writer

    async def close(self) -> None:
        with self._open_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        await self.detach()

    async def detach(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def migrate(self, *, dry_run: bool = False, target: int | None = None) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            self._use_wal(conn)
            return self._apply(conn, dry_run, target)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot migrate SQLite database {self.path}: {exc}") from exc
        finally:
            conn.close()

    # -- runs --------------------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[str, bool]:
        (created,) = await self.create_runs([run])
        return created

    async def create_runs(self, runs: list[NewRun]) -> list[tuple[str, bool]]:
        now = self.now()
        # large arguments go to the blob store side by side
        all_params = await asyncio.gather(*(self._new_run_params(run, now) for run in runs))

        def write(conn: sqlite3.Connection) -> list[tuple[str, bool]]:
            out = []
            for params in all_params:
                if params["debounce_key"] is not None:
                    row = conn.execute(Q["upsert_debounced_run"], params).fetchone()
                    out.append((str(row["id"]), row["id"] == params["id"]))
                elif conn.execute(Q["insert_run"], params).rowcount == 1:
                    out.append((params["id"], True))
                else:
                    row = conn.execute(Q["run_by_idempotency_key"], params).fetchone()
                    out.append((str(row["id"]), False))
            return out

        # a trigger gives up on a database that cannot take writes (a full disk) in the end
        result: list[tuple[str, bool]] = await self._write(
            write, (CLAIMABLE,), give_up_after=trigger_timeout()
        )
        return result

    async def get_run(self, run_id: str, *, values: bool = True) -> RunRecord:
        rows = await self._read(Q["get_run"], {"id": run_id})
        if not rows:
            raise RunNotFound(f"no run with id {run_id!r} in {self.path}")
        return await self._run_record(rows[0], full=True, fetch=values)

    async def get_runs(self, run_ids: list[str]) -> list[RunRecord]:
        rows = await self._read(Q["get_runs"], {"ids": json.dumps(run_ids)})
        return await self._in_order(run_ids, rows)

    async def list_runs(
        self, *, status: RunStatus | None = None, task: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        rows = await self._read(
            Q["list_runs"],
            {"status": None if status is None else str(status), "task": task, "limit": limit},
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
        now = time.time()
        params = {
            "app": app,
            "worker_id": worker_id,
            "tasks": json.dumps(tasks),
            "limit": limit,
            "now": now,
        }

        def write(
            conn: sqlite3.Connection,
        ) -> tuple[list[sqlite3.Row], float | None, float | Unknown | None]:
            # one writer: what is read here cannot change before the claim commits
            conn.execute(Q["expire_runs"], params)
            queues = {
                row["name"]: self._queue_config(row)
                for row in conn.execute(Q["app_queues"], params)
            }
            if not limits_apply(queues, task_limits or {}):
                claimed = conn.execute(Q["claim_runs"], params).fetchall()
                # with the look at what is left (the worker's next read)
                left = wake_time(conn.execute(Q["next_wake_at"], params).fetchall())
                return claimed, None, left
            window = rate_window(queues)
            admission = admit(
                conn.execute(Q["claim_candidates"], {**params, "scan": limit + CANDIDATE_SCAN}),
                conn.execute(Q["running_runs"], params).fetchall(),
                conn.execute(Q["recent_starts"], {**params, "since": now - window})
                if window
                else [],
                queues,
                task_limits or {},
                limit,
                now,
                self._turns,
            )
            for query, ids, more in admission.cancellations(now):
                conn.execute(Q[query], {**more, "ids": json.dumps(ids)})
            claimed = conn.execute(
                Q["claim_ids"], {**params, "ids": json.dumps(admission.claim)}
            ).fetchall()
            return claimed, admission.retry_at, UNKNOWN

        # not fsynced: a claim lost to a power cut only means the run is claimed again
        rows, retry_at, next_at = await self._write(write, durable=False)
        return await self._claimed(rows, retry_at, next_at)

    async def next_wake_at(self, *, app: str, tasks: list[str]) -> float | None:
        return wake_time(
            await self._read(Q["next_wake_at"], {"app": app, "tasks": json.dumps(tasks)})
        )

    # -- journal -----------------------------------------------------------------------------

    async def load_journal(self, run_id: str, *, values: bool = True) -> list[JournalEntry]:
        rows = await self._read(Q["load_journal"], {"run_id": run_id})
        return await self._journal_entries(run_id, rows, values=values)

    async def _read_histories(
        self, run_ids: list[str]
    ) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
        ids = {"ids": json.dumps(run_ids)}
        return await self._read(Q["histories"], ids), await self._read(Q["histories_attempts"], ids)

    async def load_attempts(self, run_id: str) -> list[Attempt]:
        return self._attempts(run_id, await self._read(Q["load_attempts"], {"run_id": run_id}))

    def _insert_entries(
        self, conn: sqlite3.Connection, run_id: str, entry_params: list[dict[str, Any]]
    ) -> None:
        for params in entry_params:
            try:
                conn.execute(Q["insert_entry"], params)
            except sqlite3.IntegrityError as exc:
                existing = conn.execute(Q["entry_at"], params).fetchone()
                check_same_entry(run_id, params, existing, exc, self.keyring)

    async def append(
        self, run_id: str, lease: Lease, *, entries: list[JournalEntry], attempts: list[Attempt]
    ) -> None:
        entry_params = await self._entry_params(run_id, entries)
        attempt_params = [self._attempt_params(a) for a in attempts]

        def write(conn: sqlite3.Connection) -> None:
            check_held(run_id, conn.execute(Q["check_lease"], {"id": run_id}).fetchone(), lease)
            self._insert_entries(conn, run_id, entry_params)
            for params in attempt_params:
                conn.execute(Q["insert_attempt"], params)

        await self._write(write)

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

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute(Q["finish_attempt"], params).rowcount != 1:
                raise refused_finish(
                    run_id, conn.execute(Q["check_lease"], params).fetchone(), lease
                )
            self._insert_entries(conn, run_id, entry_params)
            for one in attempt_params:
                conn.execute(Q["insert_attempt"], one)
            if transition.next_attempt:
                conn.execute(Q["drop_failed_entries"], {"run_id": run_id})
            if transition.status is RunStatus.CANCELLED:  # its children go with it
                conn.execute(Q["cancel_idle_tree"], params)
                conn.execute(Q["request_cancel_tree"], params)

        await self._write(write, topics)
        # the waiters woken by the commit run after this: they find the result here
        self._completed(run_id, transition)

    async def cancel_run(self, run_id: str) -> RunStatus:
        params = {"id": run_id, "now": time.time()}

        def write(conn: sqlite3.Connection) -> RunStatus:
            conn.execute(Q["cancel_idle_tree"], params)
            conn.execute(Q["request_cancel_tree"], params)
            row = conn.execute(Q["check_lease"], params).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self.path}")
            return RunStatus(row["status"])

        status: RunStatus = await self._write(write, (run_topic(run_id), CANCEL, CLAIMABLE))
        return status

    async def cancel_requests(self, worker_id: str) -> list[tuple[str, int]]:
        rows = await self._read(Q["cancel_requests"], {"worker_id": worker_id})
        return [(row["id"], row["lease"]) for row in rows]

    # -- queues ------------------------------------------------------------------------------

    async def declare_queues(self, app: str, queues: list[QueueConfig]) -> None:
        now = time.time()
        all_params = [self._queue_params(app, queue, now) for queue in queues]

        def write(conn: sqlite3.Connection) -> None:
            for params in all_params:
                conn.execute(Q["declare_queue"], params)

        await self._write(write, (CLAIMABLE,))

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

        def write(conn: sqlite3.Connection) -> sqlite3.Row:
            row: sqlite3.Row = conn.execute(Q["set_queue"], params).fetchone()
            return row

        return self._queue_config(await self._write(write, (CLAIMABLE,)))

    async def queue_stats(self, app: str | None = None) -> list[QueueStats]:
        rows = await self._read(Q["queue_stats"], {"app": app, "now": time.time()})
        return [self._queue_stats(row) for row in rows]

    async def expire_runs(self) -> int:
        params = {"app": None, "now": time.time()}

        def write(conn: sqlite3.Connection) -> int:
            return int(conn.execute(Q["expire_runs"], params).rowcount)

        count: int = await self._write(write, (CLAIMABLE,))
        return count

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
        params["statuses"] = json.dumps(params["statuses"])
        if dry_run:
            return [row["id"] for row in await self._read(Q["purgeable_runs"], params)]

        def write(conn: sqlite3.Connection) -> list[str]:
            ids = [row["id"] for row in conn.execute(Q["purgeable_runs"], params)]
            doomed = {"ids": json.dumps(ids)}
            for query in ("delete_journals", "delete_attempts", "delete_runs"):
                conn.execute(Q[query], doomed)
            return ids

        purged: list[str] = await self._write(write)
        return purged

    async def reencrypt_values(
        self, *, after: str = "", limit: int = 200
    ) -> tuple[int, str | None]:
        ids = [
            row["id"]
            for row in await self._read(Q["run_ids_after"], {"after": after, "limit": limit})
        ]
        if not ids:
            return 0, None
        rows = await self._read(Q["inline_values_of"], {"ids": json.dumps(ids)})
        rewrites = self._rotated(rows)

        def write(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(Q[f"rewrite_{r['col']}"], r).rowcount for r in rewrites)

        count: int = await self._write(write) if rewrites else 0
        return count, ids[-1]

    async def reclaim(self) -> None:
        def vacuum() -> None:
            conn = self._connect()
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("VACUUM")  # rebuilds the file: no free page keeps old bytes
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and the log is emptied
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite VACUUM of {self.path} failed: {exc}") from exc
            finally:
                conn.close()

        await asyncio.to_thread(vacuum)

    async def referenced_blobs(self, keys: list[str]) -> set[str]:
        rows = await self._read(Q["referenced_blobs"], {"keys": json.dumps(keys)})
        return {row["key"] for row in rows}

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(self, worker: WorkerRecord) -> None:
        params = self._worker_params(worker)
        # durable: a worker whose row a power cut took could claim nothing (claims need it)
        await self._write(lambda conn: conn.execute(Q["register_worker"], params))

    async def heartbeat(self, worker_id: str) -> bool:
        params = {"id": worker_id, "now": time.time()}

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(Q["heartbeat"], params).rowcount == 1

        alive: bool = await self._write(write, durable=False)
        return alive

    async def live_workers(self, *, app: str) -> list[WorkerRecord]:
        rows = await self._read(Q["live_workers"], {"app": app})
        return [self._worker_record(row) for row in rows]

    async def reap_workers(self, worker_ids: list[str], *, reason: str) -> int:
        now = time.time()

        def write(conn: sqlite3.Connection) -> int:
            requeued = 0
            for worker_id in worker_ids:
                conn.execute(Q["mark_worker_dead"], {"id": worker_id, "status": "dead"})
                requeued += conn.execute(
                    Q["requeue_worker_runs"],
                    {
                        "worker_id": worker_id,
                        "now": now,
                        "note": f"requeued: worker {worker_id} {reason}",
                    },
                ).rowcount
            return requeued + int(conn.execute(Q["requeue_orphans"], {"now": now}).rowcount)

        count: int = await self._write(write, (CLAIMABLE,))
        return count

    async def deregister_worker(self, worker_id: str) -> None:
        params = {"id": worker_id, "status": "stopped"}
        await self._write(lambda conn: conn.execute(Q["mark_worker_dead"], params), durable=False)

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        return []

    async def release_strays(self, worker_id: str, *, keep: list[str]) -> list[str]:
        params = {"worker_id": worker_id, "keep": json.dumps(keep), "now": time.time()}

        def write(conn: sqlite3.Connection) -> list[str]:
            strays = [row["id"] for row in conn.execute(Q["release_strays"], params).fetchall()]
            conn.execute(Q["requeue_orphans"], params)
            return strays

        released: list[str] = await self._write(write, (CLAIMABLE,))
        return released

    async def note_unclaimable(self, *, app: str, tasks: list[str], note: str) -> int:
        params = {"app": app, "tasks": json.dumps(tasks), "note": note, "now": time.time()}

        def write(conn: sqlite3.Connection) -> int:
            return int(conn.execute(Q["note_unclaimable"], params).rowcount)

        count: int = await self._write(write, durable=False)
        return count

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
        if self._writer is None:
            await self.open()
        wanted = None if topics is None else frozenset(topics)
        # commits of other processes reach the notifier through the writer's data_version watch
        return await self._notifier.wait(
            self._notifier.token() if since is None else since, wanted, timeout
        )


def _statements(script: str) -> list[str]:
    """The statements of a migration script (a trigger's body holds semicolons of its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())  # trailing comments: a no-op
    return statements
