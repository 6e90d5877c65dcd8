"""What every SQL store shares: turning records into query parameters and rows back into
records, and moving large values to and from the blob store. Dialects differ only in how they
run the queries."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Iterable, Sequence
from sys import intern
from typing import Any, cast

import msgspec

from perdure.errors import CorruptJournal, LeaseLost, RunCancelled, RunNotFound
from perdure.records import (
    Attempt,
    Claimed,
    EntryKind,
    EntryStatus,
    ErrorInfo,
    History,
    JournalEntry,
    Lease,
    NewRun,
    QueueConfig,
    QueueStats,
    RunRecord,
    RunStatus,
    Transition,
    Value,
    WorkerRecord,
)
from perdure.store.connector import (
    Batch,
    Connector,
    Last,
    Operation,
    Query,
    Result,
    Row,
    rows_of,
)
from perdure.store.notify import CLAIMABLE, run_topic
from perdure.values import StoredValues, stays_inline

log = logging.getLogger("perdure.store")


def encode_error(error: ErrorInfo | None) -> bytes | None:
    return None if error is None else msgspec.msgpack.encode(error)


def decode_error(data: bytes | None, where: str) -> ErrorInfo | None:
    if data is None:
        return None
    try:
        return msgspec.msgpack.decode(data, type=ErrorInfo)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptJournal(f"{where}: stored error cannot be read ({exc})") from exc


_ENTRY_FIELDS = ("kind", "name", "status", "codec", "value", "blob_key", "error")


def check_same_entry(
    run_id: str,
    params: dict[str, Any],
    existing: Row | None,
    values: StoredValues,
) -> None:
    """A journal position that is already recorded: fine if it holds exactly this entry (a
    write retried after its acknowledgement was lost), CorruptJournal otherwise."""
    what = f"journal entry (run {run_id}, seq {params['seq']})"
    if existing is not None and all(
        values.same_inline(params["codec"], existing[name], params[name], what)
        if name == "value"
        else _same(existing[name], params[name])
        for name in _ENTRY_FIELDS
    ):
        return
    raise CorruptJournal(
        f"run {run_id}: journal position {params['seq']} is already recorded; "
        "the same position was written twice under one lease"
    )


def _same(stored: Any, ours: Any) -> bool:
    if isinstance(stored, memoryview):
        stored = bytes(stored)
    return bool(stored == ours)


def check_held(run_id: str, row: Row | None, lease: Lease) -> None:
    """LeaseLost unless `row` (its status, lease and worker_id) shows the run running under
    `lease`."""
    if (
        row is None
        or row["status"] != "running"
        or row["lease"] != lease.number
        or row["worker_id"] != lease.worker_id
    ):
        raise LeaseLost(f"run {run_id} is no longer leased to this worker")


def refused_finish(run_id: str, row: Row | None, lease: Lease) -> Exception:
    """Why finish_attempt changed nothing: RunCancelled when the run is still held under
    `lease` but a cancel was requested meanwhile (the worker then ends it as cancelled: a
    finish never overwrites a requested cancel), else LeaseLost."""
    check_held(run_id, row, lease)
    assert row is not None
    if row["cancel_requested"]:
        return RunCancelled(f"run {run_id} was asked to cancel before it could finish")
    return LeaseLost(f"run {run_id} is no longer leased to this worker")


def purge_params(
    finished_before: float, statuses: Iterable[RunStatus], app: str | None, limit: int
) -> dict[str, Any]:
    """Parameters of purgeable_runs; only ended runs can be purged."""
    wanted = [RunStatus(s) for s in statuses]
    running = [str(s) for s in wanted if not s.terminal]
    if running:
        raise ValueError(f"only ended runs can be purged, not {', '.join(running)} ones")
    return {
        "before": finished_before,
        "statuses": [str(s) for s in wanted],
        "app": app,
        "limit": limit,
    }


def set_queue_params(
    app: str, name: str, concurrency: int | None, unlimited: bool, paused: bool | None, now: float
) -> dict[str, Any]:
    """Parameters of set_queue: a new limit (or none, with `unlimited`), paused or not."""
    return {
        "app": app,
        "name": name,
        "concurrency": concurrency,
        "set_limit": int(concurrency is not None or unlimited),
        "paused": None if paused is None else int(paused),
        "now": now,
    }


def wake_time(rows: Sequence[Row]) -> float | None:
    """The answer of next_wake_at: when the first claimable run is due (None: no run is)."""
    value = rows[0]["wake_at"] if rows else None
    return None if value is None else float(value)


def _shared(text: str | None) -> str | None:
    """The one copy of a text that many runs hold alike (what they wait for, the version or
    worker they are pinned to; intern() for those never None: app, task, queue): a listing of
    10,000 runs then holds each once, not 10,000 times."""
    return None if text is None else intern(text)


def run_record(
    row: Row,
    *,
    args: Value | None = None,
    result: Value | None = None,
    metadata: Value | None = None,
) -> RunRecord:
    """The run in `row`, with the values read from its columns (a listing reads none)."""
    get = row.get  # (columns a listing leaves out are absent)
    error, tags = get("error"), get("tags")
    return RunRecord(
        id=row["id"],
        app=intern(row["app"]),
        task=intern(row["task"]),
        queue=intern(row["queue"]),
        status=RunStatus(row["status"]),
        args=args,
        result=result,
        error=None if error is None else decode_error(error, f"run {row['id']}"),
        idempotency_key=row["idempotency_key"],
        attempt=row["attempt"],
        lease=row["lease"],
        worker_id=_shared(row["worker_id"]),
        available_at=row["available_at"],
        cancel_requested=bool(row["cancel_requested"]),
        note=row["note"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        priority=get("priority", 0),
        concurrency_key=get("concurrency_key"),
        expires_at=get("expires_at"),
        parent_id=get("parent_id"),
        signals=get("signals", 0),
        waiting_for=_shared(get("waiting_for")),
        tags=tuple(json.loads(tags)) if tags else (),
        trace_context=get("trace_context"),
        version=_shared(get("version")),
        replay_of=get("replay_of"),
        continued_as=get("continued_as"),
        metadata=metadata,
    )


def runs_of(query: Query) -> Operation[list[RunRecord]]:
    """The operation of a listing: its runs, without values. Each is made as its row is read
    (on SQLite's reader thread, if the read goes there), so a long listing's rows are never all
    held at once, nor beside its records."""
    result: Result = yield query._replace(each=run_record)
    return cast("list[RunRecord]", result.rows)


class Unknown:
    """Not read (as opposed to None, read and absent)."""


UNKNOWN = Unknown()


class RowMapping:
    """Records <-> rows (values through StoredValues)."""

    values: StoredValues

    def now(self) -> float:
        raise NotImplementedError

    async def _run_record(self, row: Row, *, fetch: bool = True) -> RunRecord:
        """The run in `row` with its values: arguments, result and metadata (`fetch`: see
        StoredValues.resolve)."""
        values = self.values
        return run_record(
            row,
            args=await values.from_columns(row, "args", fetch=fetch),
            result=await values.from_columns(row, "result", fetch=fetch),
            metadata=(
                await values.from_columns(row, "metadata", fetch=fetch)
                if "metadata_codec" in row
                else None
            ),
        )

    async def _claimed(
        self, rows: Sequence[Row], retry_at: float | None, next_at: float | Unknown | None
    ) -> Claimed:
        """Claimed runs in claim order (RETURNING has none), with their histories."""
        rows = sorted(rows, key=lambda row: (-row["priority"], row["available_at"], row["id"]))
        claimed = Claimed()
        for row in rows:
            try:
                claimed.append(await self._run_record(row))
            except Exception as exc:  # the claim stands: the worker gives the run back
                claimed.append(run_record(row))
                claimed.unreadable[row["id"]] = exc
        claimed.retry_at = retry_at
        if not isinstance(next_at, Unknown):
            claimed.looked, claimed.next_at = True, next_at
        again = [run.id for run in claimed if run.has_history]  # (most first claims have none)
        journals: dict[str, list[Row]] = {}
        attempts: dict[str, list[Row]] = {}
        if again:
            try:
                journal_rows, attempt_rows = await self._read_histories(again)
            except Exception:  # the claim stands: each of those runs reads its own history
                log.debug("histories not read with the claim", exc_info=True)
                return claimed
            for row in journal_rows:
                journals.setdefault(row["run_id"], []).append(row)
            for row in attempt_rows:
                attempts.setdefault(row["run_id"], []).append(row)
        for run in claimed:
            try:
                claimed.histories[run.id] = History(
                    await self._journal_entries(run.id, journals.get(run.id, ())),
                    self._attempts(run.id, attempts.get(run.id, ())),
                )
            except Exception:
                log.debug("run %s: history not read with the claim", run.id, exc_info=True)
        return claimed

    async def _read_histories(self, run_ids: list[str]) -> tuple[Sequence[Row], Sequence[Row]]:
        """The journal rows (by run, in seq order) and attempt rows of these runs."""
        raise NotImplementedError

    async def _in_order(self, run_ids: list[str], rows: Iterable[Row]) -> list[RunRecord]:
        by_id = {row["id"]: row for row in rows}
        missing = [run_id for run_id in run_ids if run_id not in by_id]
        if missing:
            raise RunNotFound(f"no run with id {missing[0]!r}")
        return [await self._run_record(by_id[run_id]) for run_id in run_ids]

    async def _journal_entries(
        self, run_id: str, rows: Iterable[Row], *, values: bool = True
    ) -> list[JournalEntry]:
        entries = []
        for row in rows:
            where = f"journal row (run {run_id}, seq {row['seq']})"
            try:
                kind = EntryKind(row["kind"])
                status = EntryStatus(row["status"])
            except ValueError as exc:
                raise CorruptJournal(f"{where}: {exc}") from exc
            try:
                value = await self.values.resolve(
                    row["codec"],
                    row["value"],
                    row["blob_key"],
                    row["raw_size"],
                    row["stored_size"],
                    fetch=values,
                )
            except CorruptJournal as exc:  # its blob is missing: name the entry
                raise CorruptJournal(f"{where} ({kind} {row['name']!r}): {exc}") from exc
            entries.append(
                JournalEntry(
                    seq=row["seq"],
                    kind=kind,
                    name=row["name"],
                    status=status,
                    value=value,
                    error=decode_error(row["error"], where),
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                )
            )
        return entries

    @staticmethod
    def _attempts(run_id: str, rows: Iterable[Row]) -> list[Attempt]:
        return [
            Attempt(
                run_id=run_id,
                run_attempt=row["run_attempt"],
                seq=row["seq"],
                attempt=row["attempt"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                error=decode_error(row["error"], f"attempt row (run {run_id}, seq {row['seq']})"),
            )
            for row in rows
        ]

    async def _entry_params(self, run_id: str, entries: list[JournalEntry]) -> list[dict[str, Any]]:
        params = []
        values = self.values
        for entry in entries:
            value = entry.value
            if not stays_inline(value, values.inline_limit):  # (a step's is offloaded already)
                value = await values.offload(value)
            codec, data, blob_key, raw_size, stored_size = values.stored(value)
            attempt = entry.attempt
            params.append(
                {
                    "run_id": run_id,
                    "seq": entry.seq,
                    "kind": entry.kind.value,
                    "name": entry.name,
                    "status": entry.status.value,
                    "codec": codec,
                    "value": data,
                    "blob_key": blob_key,
                    "raw_size": raw_size,
                    "stored_size": stored_size,
                    "error": encode_error(entry.error),
                    "started_at": entry.started_at,
                    "finished_at": entry.finished_at,
                    "run_attempt": attempt.run_attempt if attempt else 1,
                    "attempt": attempt.attempt if attempt else 0,
                    "attempt_started_at": attempt.started_at if attempt else None,
                }
            )
        return params

    @staticmethod
    def _attempt_params(attempt: Attempt) -> dict[str, Any]:
        return {
            "run_id": attempt.run_id,
            "run_attempt": attempt.run_attempt,
            "seq": attempt.seq,
            "attempt": attempt.attempt,
            "started_at": attempt.started_at,
            "finished_at": attempt.finished_at,
            "error": encode_error(attempt.error),
        }

    @staticmethod
    def _worker_record(row: Row) -> WorkerRecord:
        return WorkerRecord(
            id=row["id"],
            app=row["app"],
            host=row["host"],
            host_key=row["host_key"],
            pid=row["pid"],
            pid_started=row["pid_started"],
            started_at=row["started_at"],
            heartbeat_at=row["heartbeat_at"],
            tasks=json.loads(row["tasks"]),
            version=row["version"],
        )

    @staticmethod
    def _worker_params(worker: WorkerRecord) -> dict[str, Any]:
        return {
            "id": worker.id,
            "app": worker.app,
            "host": worker.host,
            "host_key": worker.host_key,
            "pid": worker.pid,
            "pid_started": worker.pid_started,
            "tasks": json.dumps(worker.tasks),
            "started_at": worker.started_at,
            "heartbeat_at": worker.heartbeat_at,
            "version": worker.version,
        }

    async def _finish_params(
        self, run_id: str, lease: Lease, transition: Transition, attempts: list[Attempt]
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
        """Parameters of finish_attempt's update, its attempt rows (the task-level attempt
        included), and the topics to announce."""
        now = self.now()
        params = {
            "id": run_id,
            "lease": lease.number,
            "worker_id": lease.worker_id,
            "status": str(transition.status),
            "available_at": transition.available_at,
            "error": encode_error(transition.error),
            "bump": 1 if transition.next_attempt else 0,
            "now": now,
            "finished_at": now if transition.status.terminal else None,
            "children_target": transition.children_target,
            "note": transition.note,
            "waiting_for": (
                transition.waiting_for if transition.status is RunStatus.WAITING else None
            ),
            "signals": transition.signals,
            **self.values.columns("result", await self.values.offload(transition.result)),
        }
        ended = [*attempts, *([transition.attempt] if transition.attempt else [])]
        topics = [run_topic(run_id)]
        if transition.status in (RunStatus.QUEUED, RunStatus.WAITING) or transition.wakes:
            topics.append(CLAIMABLE)
        return params, [self._attempt_params(a) for a in ended], topics

    async def _new_runs_params(self, runs: Sequence[NewRun], now: float) -> list[dict[str, Any]]:
        """insert_run's parameters of `runs`: large arguments go to the blob store side by side
        (a task each: only theirs, small ones stay inline and need none)."""
        args: list[Value | None] = [run.args for run in runs]
        limit = self.values.inline_limit
        big = [i for i, value in enumerate(args) if not stays_inline(value, limit)]
        if big:
            stored = await asyncio.gather(*(self.values.offload(args[i]) for i in big))
            for i, value in zip(big, stored, strict=True):
                args[i] = value
        return [self._run_params(run, now, value) for run, value in zip(runs, args, strict=True)]

    async def _new_run_params(self, run: NewRun, now: float) -> dict[str, Any]:
        (params,) = await self._new_runs_params([run], now)
        return params

    def _run_params(self, run: NewRun, now: float, args: Value | None) -> dict[str, Any]:
        """insert_run's parameters, with `args` already offloaded (or small enough)."""
        return {
            "id": run.id,
            "app": run.app,
            "task": run.task,
            "queue": run.queue,
            "idempotency_key": run.idempotency_key,
            "available_at": run.available_at,
            "now": now,
            "priority": run.priority,
            "concurrency_key": run.concurrency_key,
            "expires_at": run.expires_at,
            "debounce_key": run.debounce_key,
            "parent_id": run.parent_id,
            "awaited": int(run.awaited),
            "tags": json.dumps(run.tags) if run.tags else None,
            "trace_context": run.trace_context,
            "version": run.version,
            "replay_of": run.replay_of,
            "reuse_before": run.reuse_before,
            "children_done": run.children_done,
            **self.values.columns("args", args),
        }

    @staticmethod
    def _queue_config(row: Row) -> QueueConfig:
        return QueueConfig(
            name=row["name"],
            concurrency=row["concurrency"],
            key_concurrency=row["key_concurrency"],
            rate_limit=row["rate_limit"],
            rate_period=row["rate_period"],
            rate_by_key=bool(row["rate_by_key"]),
            strategy=row["strategy"],
            paused=bool(row["paused"]),
        )

    @staticmethod
    def _queue_params(app: str, queue: QueueConfig, now: float) -> dict[str, Any]:
        return {
            "app": app,
            "name": queue.name,
            "concurrency": queue.concurrency,
            "key_concurrency": queue.key_concurrency,
            "rate_limit": queue.rate_limit,
            "rate_period": queue.rate_period,
            "rate_by_key": int(queue.rate_by_key),
            "strategy": queue.strategy,
            "paused": int(queue.paused),
            "now": now,
        }

    def _queue_stats(self, row: Row) -> QueueStats:
        return QueueStats(
            app=row["app"],
            config=self._queue_config(row),
            overridden=bool(row["overridden"]),
            running=row["running"],
            queued=row["queued"],
            oldest_waiting_at=row["oldest_waiting_at"],
        )


class Operations(RowMapping):
    """The base of the store's operations over `db`: one read, one counted write."""

    db: Connector

    async def _one(self, query: str, params: dict[str, Any], what: str) -> Sequence[Row]:
        """The rows of one read query."""
        return await self.db.read(lambda: rows_of(Query(query, params)), what)

    async def _runs(self, query: str, params: dict[str, Any], what: str) -> list[RunRecord]:
        """The runs of one listing query, without values (see runs_of)."""
        return await self.db.read(lambda: runs_of(Query(query, params)), what)

    async def _count(
        self,
        query: str,
        params: dict[str, Any],
        topics: Collection[str] = (),
        *,
        durable: bool = True,
    ) -> int:
        """One write query; how many rows it changed."""

        def write() -> Operation[int]:
            results: list[Result] = yield Last([Query(query, params)])
            return results[0].rowcount

        return await self.db.write(write, query, topics, durable=durable)


def insert_runs(runs: list[dict[str, Any]]) -> Operation[list[bool]]:
    """Insert new runs (insert_run's parameters) together (one round trip on PostgreSQL) and,
    for those inserted, their tags (run_tags) and, for a replay, the journal entries it reuses
    from the run it replays; whether each was inserted (False: its id or idempotency key was
    taken)."""
    results: list[Result] = yield Batch([Query("insert_run", params) for params in runs])
    inserted = [result.rowcount == 1 for result in results]
    more = []
    for params, new in zip(runs, inserted, strict=True):
        if new and params["tags"] is not None:
            more.append(Query("insert_run_tags", {"run_id": params["id"], "tags": params["tags"]}))
        if new and params["reuse_before"] > 1:  # a replay: the recorded results it reuses
            more.append(Query("copy_journal", params))
    if more:
        yield Batch(more)
    return inserted


def insert_run(params: dict[str, Any]) -> Operation[bool]:
    """Insert one new run (see insert_runs); whether it was inserted."""
    (inserted,) = yield from insert_runs([params])
    return inserted
