"""Run logs: every record logged inside a run — by any logger, in the task's body or a step's —
is kept with the run, in the journal's order, with the step it came from; secret values are
redacted first. `perdure runs logs RUN [--follow]`, the API and the dashboard show them.

They are taken where records are made (a log record factory), not by a handler: the process's
own logging (its handlers, levels, and Python's last-resort printing of warnings when nothing is
configured) is left as it was. A record is taken when the logging configuration lets it be made
(the logger's level) and is at least PERDURE_RUN_LOG_LEVEL (default INFO).

They are kept as a stream of the run (progress.LOGS, "perdure.logs"), with its guarantees: each
line is keyed by where in the run's code it was logged, so a resumed run that logs the same
lines again keeps one copy; a step that runs again (a retry) adds its lines; lines are written
in batches behind the run (a burst of lines is one write), and all of them before its end.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from perdure import context as run_context
from perdure.errors import ConfigurationError
from perdure.secrets import redact

MAX_MESSAGE = 8 * 1024
"""Characters of a line's message (and its traceback) kept; the rest is cut."""

_installed = False
_lock = threading.Lock()
_previous: Any = None


def level() -> int:
    """The least level of the records kept (PERDURE_RUN_LOG_LEVEL, default INFO; OFF: none)."""
    name = os.environ.get("PERDURE_RUN_LOG_LEVEL", "INFO").upper()
    if name == "OFF":
        return logging.CRITICAL + 1
    found = logging.getLevelNamesMapping().get(name)
    if found is None:
        raise ConfigurationError(
            f"PERDURE_RUN_LOG_LEVEL={name!r} is not a level: use DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL, or OFF to keep none"
        )
    return found


def install() -> None:
    """Take the records made inside runs from now on, in this process (idempotent)."""
    global _installed, _previous
    with _lock:
        if _installed:
            return
        threshold = level()
        _previous = logging.getLogRecordFactory()
        previous = _previous

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record: logging.LogRecord = previous(*args, **kwargs)
            if record.levelno >= threshold and not record.name.startswith(_OWN):
                ctx = run_context.current()
                if ctx is not None:
                    _take(ctx, record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


_OWN = "perdure.run_logs"
"""This module's own logger: its records are never taken (no loop through a failing write)."""


def _take(ctx: run_context.RunContext, record: logging.LogRecord) -> None:
    try:
        message = redact(record.getMessage())
    except Exception:  # a record whose arguments do not format: its handler will say so
        message = str(record.msg)
    entry: dict[str, Any] = {
        "at": record.created,
        "level": record.levelname,
        "logger": record.name,
        "message": _cut(message),
    }
    step = run_context._in_step.get()
    if step is not None:
        entry["step"] = step.name
        entry["seq"] = step.seq
        entry["attempt"] = step.attempt
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        entry["traceback"] = _cut(redact(text))
    ctx.data.log(entry)


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return text[:MAX_MESSAGE] + f"… ({len(text) - MAX_MESSAGE:,} more characters)"
