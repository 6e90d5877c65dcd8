"""Records as JSON-ready data, for the shells (the CLI's --json, the server's API): one shape
for a run wherever it is shown."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec

from perdure import serde
from perdure.admin import RunDetails
from perdure.errors import PerdureError
from perdure.records import Attempt, JournalEntry, QueueStats, RunRecord, RunStatus, ScheduleRecord
from perdure.stats_records import RunStats
from perdure.wait_records import TokenRecord


def value_json(value: Any) -> Any:
    """`value` as plain JSON data (what JSON cannot hold, as its repr)."""
    return json.loads(msgspec.json.encode(value, enc_hook=repr))


def decoded(data: bytes, codec: str) -> Any:
    """A stored value decoded, or a note saying why it cannot be."""
    try:
        return serde.decode(data, codec=serde.Codec(codec), what="value")
    except PerdureError as exc:
        return f"<{exc}>"


def run_dict(run: RunRecord, *, values: bool = True) -> dict[str, Any]:
    """A run as JSON data (with its arguments and result unless `values` is False)."""
    out = {
        "id": run.id,
        "app": run.app,
        "task": run.task,
        "queue": run.queue,
        "status": str(run.status),
        "attempt": run.attempt,
        "worker_id": run.worker_id,
        "idempotency_key": run.idempotency_key,
        "note": run.note,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "available_at": run.available_at,
        "tags": run.tags,
        "error": None if run.error is None else msgspec.to_builtins(run.error),
        "version": run.version,
        "replay_of": run.replay_of,
        "continued_as": run.continued_as,
    }
    if run.result is not None:
        if values:
            out["result"] = value_json(decoded(run.result.data, run.result.codec))
        out["result_size"] = {"raw": run.result.raw_size, "stored": run.result.stored_size}
    if run.args is not None and values:
        out["args"] = value_json(decoded(run.args.data, run.args.codec))
    return out


def token_dict(token: TokenRecord) -> dict[str, Any]:
    """A token as JSON data (with its completion data when it was read)."""
    out: dict[str, Any] = {
        "id": token.id,
        "app": token.app,
        "run_id": token.run_id,
        "name": token.name,
        "status": str(token.status),
        "tags": token.tags,
        "idempotency_key": token.idempotency_key,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "completed_at": token.completed_at,
    }
    if token.data is not None and token.data.data:
        out["data"] = value_json(decoded(token.data.data, token.data.codec))
    return out


def schedule_dict(s: ScheduleRecord) -> dict[str, Any]:
    """A schedule as JSON data."""
    return {
        "app": s.app,
        "key": s.key,
        "task": s.task,
        "queue": s.queue,
        "cron": s.cron,
        "tz": s.tz,
        "missed": str(s.missed),
        "declared": s.declared,
        "paused": s.paused,
        "next_at": s.next_at,
        "last_tick": s.last_tick,
        "last_run_id": s.last_run_id,
    }


def queue_dict(stats: QueueStats) -> dict[str, Any]:
    """A queue with its load, as JSON data."""
    config = stats.config
    return {
        "app": stats.app,
        "name": config.name,
        "concurrency": config.concurrency,
        "key_concurrency": config.key_concurrency,
        "rate_limit": None
        if config.rate_limit is None
        else {"starts": config.rate_limit, "per": config.rate_period, "by_key": config.rate_by_key},
        "strategy": config.strategy,
        "paused": config.paused,
        "overridden": stats.overridden,
        "running": stats.running,
        "queued": stats.queued,
        "oldest_waiting_at": stats.oldest_waiting_at,
    }


def stats_dict(stats: RunStats) -> dict[str, Any]:
    """Run statistics as JSON data (durations in seconds by "p50", "p95", "p99")."""
    return {
        "since": stats.since,
        "until": stats.until,
        "tasks": [
            {
                "task": t.task,
                "active": t.active,
                "ended": t.ended,
                "durations": {f"p{p}": d for p, d in sorted(t.durations.items())},
                "sampled": t.sampled,
                "step_durations": {f"p{p}": d for p, d in sorted(t.step_durations.items())},
                "retry_rate": t.retry_rate,
                "steps_per_minute": t.steps_per_minute,
                "stored_bytes": t.stored_bytes,
            }
            for t in stats.tasks
        ],
        "bucket": stats.bucket,
        "throughput": [
            {"at": at, "completed": done, "failed": failed} for at, done, failed in stats.throughput
        ],
    }


def details_dict(details: RunDetails) -> dict[str, Any]:
    """A run with its journal (each entry's timing, attempts, stored size and where), its
    attempts, what it waits for, its metadata and its stored size, as JSON data."""
    run, unreadable = details.run, details.unreadable
    by_seq: dict[int, list[Attempt]] = {}
    for attempt in details.attempts:
        by_seq.setdefault(attempt.seq, []).append(attempt)
    entries = [entry_dict(e, by_seq.get(e.seq, [])) for e in details.journal]
    out = run_dict(run, values=unreadable is None)
    if run.metadata is not None and run.metadata.data:
        out["metadata"] = value_json(decoded(run.metadata.data, run.metadata.codec))
    out["waiting_for"] = waiting_dict(details)
    out["stored_size"] = sum(e["stored_size"] for e in entries) + (
        run.result.stored_size if run.result else 0
    )
    out["journal"] = entries
    out["attempts"] = [attempt_dict(a) for a in details.attempts]
    if unreadable is not None:
        out["unreadable"] = f"{type(unreadable).__name__}: {unreadable}"
    return out


def entry_dict(entry: JournalEntry, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "kind": str(entry.kind),
        "name": entry.name,
        "status": str(entry.status),
        "started_at": entry.started_at,
        "finished_at": entry.finished_at,
        "duration_ms": round((entry.finished_at - entry.started_at) * 1000, 3),
        "attempts": len(attempts),
        "raw_size": entry.value.raw_size if entry.value else 0,
        "stored_size": entry.value.stored_size if entry.value else 0,
        "in_blob_store": bool(entry.value and entry.value.blob_key),
        "error": None if entry.error is None else msgspec.to_builtins(entry.error),
    }


def attempt_dict(a: Attempt) -> dict[str, Any]:
    return {**dataclasses.asdict(a), "error": msgspec.to_builtins(a.error)}


def waiting_dict(details: RunDetails) -> dict[str, Any] | None:
    """What a waiting run waits for, and until when (None unless it is WAITING)."""
    run = details.run
    if run.status is not RunStatus.WAITING:
        return None
    wait = details.waiting_on
    if wait is None:  # a sleep, children, a retry's backoff
        return {"kind": run.waiting_for or "sleep", "until": run.available_at}
    out: dict[str, Any] = {"kind": str(wait.kind), "key": wait.key, "until": wait.deadline}
    if wait.match is not None and wait.match.data:
        out["match"] = value_json(decoded(wait.match.data, wait.match.codec))
    return out


def duration_text(seconds: float | None) -> str:
    """A duration for people: 850 ms, 12.3 s, 4 m 05 s, 2 h 10 m ("" for none)."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} m"


def bytes_text(n: int | None) -> str:
    """A size for people: 512 B, 3.4 KB, 12.0 MB, 1.2 GB."""
    size = float(n or 0)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
