"""A PostgreSQL server of a test's (or the chaos script's) own: initdb in a temporary folder,
served on a free port of 127.0.0.1, to crash (immediate shutdown), stop and restart without
ever touching the shared server. Needs the server binaries (Debian's postgresql package)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def require_server_binaries() -> Path:
    """The folder of initdb and pg_ctl; skip (fail with CI=true) without them."""
    bindir = _bindir()
    if bindir is None:
        message = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateCluster:
    """`with PrivateCluster(settings) as cluster:` a running server; `cluster.url()`."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bindir = require_server_binaries()
        self.settings = {"listen_addresses": "127.0.0.1", "fsync": "on", **(settings or {})}
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="perdure-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def url(self, dbname: str = "postgres") -> str:
        """The server's URL."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",
                *(f"-c {k}={v}" for k, v in self.settings.items()),
            ]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (connections cut, a clean shutdown) or "immediate" (a crash:
        no checkpoint, whatever is not on disk is lost; the next start recovers from the WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def crash(self) -> None:
        """An immediate shutdown, as a power cut leaves the database."""
        self.stop("immediate")

    def restart(self, mode: str = "fast") -> None:
        """Stop (in `mode`) and start again."""
        self.stop(mode)
        self.start()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def close(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
