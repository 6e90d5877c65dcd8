"""Records as JSON-ready data, for the shells (the CLI's --json, the server's API): one shape
for a run wherever it is shown."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from perdure import serde
from perdure.errors import PerdureError
from perdure.records import QueueStats, RunRecord, ScheduleRecord
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
            }
            for t in stats.tasks
        ],
        "bucket": stats.bucket,
        "throughput": [
            {"at": at, "completed": done, "failed": failed} for at, done, failed in stats.throughput
        ],
    }
