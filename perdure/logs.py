"""Log output: one JSON object per record for machines (`perdure worker --json`), and the
stable keys perdure puts in each record's `extra`."""

from __future__ import annotations

import json
import logging

KEYS = ("run_id", "task", "step", "attempt", "action", "worker")
"""Keys perdure sets on its log records, when they apply."""


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON with time, level, logger, message and perdure's keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in KEYS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str, *, as_json: bool) -> None:
    """Send perdure's (and the app's) logs to stderr, as text or JSON lines."""
    handler = logging.StreamHandler()
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
