"""PostgreSQL restarted in the middle of a workload: workers log it, reconnect with backoff, and
every run completes; no recorded step runs again, no run completes twice."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

import perdure

from . import crashapp
from .chaos.harness import ChaosReport, check
from .conftest import WorkerProcess, wait_until

pytestmark = pytest.mark.crash


def restart_postgres() -> None:
    """Restart the local server (fast shutdown: every connection is cut)."""
    version = subprocess.run(
        ["ls", "/etc/postgresql"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
    )


def _log_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_runs_survive_a_postgres_restart(
    postgres_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    log = tmp_path / "side-effects.log"
    app = perdure.App("crash", database=postgres_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="pipeline")(crashapp.pipeline.fn)
    env = {"PERDURE_DATABASE_URL": postgres_url, "CRASH_LOG": str(log)}
    runs, steps = 40, 5
    handles = [await app.get_task("pipeline").trigger(f"c{i}", steps, 0.05) for i in range(runs)]
    for n in range(2):
        worker_processes.append(
            WorkerProcess("tests.crashapp:app", env, log=tmp_path / f"worker-{n}.log")
        )
    await wait_until(lambda: _log_lines(log) >= 40, timeout=60)  # mid-workload
    await asyncio.to_thread(restart_postgres)
    for handle in handles:
        await handle.result(timeout=120)
    report = ChaosReport(runs=runs, steps=steps, workers=2)
    await check(app, handles, log, report)
    assert report.problems == []
    assert report.completed == runs
    worker_logs = "".join((tmp_path / f"worker-{n}.log").read_text() for n in range(2))
    assert "retrying" in worker_logs  # the outage was noticed and said, not silent
    for proc in worker_processes:
        assert proc.terminate() == 0
    await app.close()
