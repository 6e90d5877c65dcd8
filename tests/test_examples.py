"""The examples run, end to end, as users run them."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_demo_kills_the_worker_and_the_run_resumes() -> None:
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killed with SIGKILL" in done.stdout
    assert "the run resumed after its last recorded step" in done.stdout
    assert "plan, search, read 0, read 1, read 2" in done.stdout
