"""Helpers for testing code that uses perdure."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path


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


class S3TestServerMissing(RuntimeError):
    """moto_server is not installed (it comes with the dev extras)."""


@contextlib.contextmanager
def s3_test_server() -> Iterator[str]:
    """A local S3 API (moto_server, from the `moto[server]` package) on 127.0.0.1 with a free
    port, for the block; yields its endpoint URL."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if server is None:
        raise S3TestServerMissing(
            "moto_server not found: install the dev extras (pip install -e '.[dev]')"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def new_bucket(endpoint: str) -> str:
    """Create a bucket on the S3 test server; returns a perdure blob URL for it."""
    bucket = f"perdure-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    urllib.request.urlopen(request, timeout=10).close()
    return (
        f"s3://{bucket}/blobs?endpoint={endpoint}&region=us-east-1"
        "&access_key_id=test&secret_access_key=test&allow_http=true"
    )
