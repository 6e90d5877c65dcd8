"""Log output: one JSON object per record for machines (`perdure worker --json`), and the
stable keys perdure puts in each record's `extra`."""

from __future__ import annotations

import json
import logging

from perdure.errors import ConfigurationError
from perdure.secrets import redact

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
        elif record.exc_text:
            out["traceback"] = record.exc_text
        return json.dumps(out, default=str)


class RedactSecrets(logging.Filter):
    """Replace the value of every secret in use by its name in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure(level: str, *, as_json: bool) -> None:
    """Send perdure's (and the app's) logs to stderr, as text or JSON lines, with secret values
    redacted."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactSecrets())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level.upper() not in logging.getLevelNamesMapping():
        raise ConfigurationError(
            f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
