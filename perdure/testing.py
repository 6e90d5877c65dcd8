"""Helpers for testing code that uses perdure."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class LogCapture(logging.Handler):
    """Collects perdure's log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def actions(self) -> list[str]:
        """The `action` key of every captured record that has one, in order."""
        return [str(r.action) for r in self.records if hasattr(r, "action")]

    def for_run(self, run_id: str) -> list[logging.LogRecord]:
        """The records about one run."""
        return [r for r in self.records if getattr(r, "run_id", None) == run_id]


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[LogCapture]:
    """Capture the records of the `perdure` loggers for the duration of the block."""
    logger = logging.getLogger("perdure")
    capture = LogCapture()
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(level)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)
