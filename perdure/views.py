"""Records as JSON-ready data, for the shells (the CLI's --json, the server's API): one shape
for a run wherever it is shown."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from perdure import serde
from perdure.errors import PerdureError
from perdure.records import RunRecord


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
