"""HYBRID: W1 (runs of three trivial steps, concurrency 50) and W5 (one-step runs one after
another, submit to result) run by a worker process that reaches the store directly, then by a
hybrid worker process that reaches it through a `perdure server` (its worker API) on the same
machine. The runs are triggered, and their results read, from the benchmark's process on the
database in both cases, so the difference is the worker's path to the store."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import perdure

Metric = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
SPEC = "benchmarks.hybridapp:app"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "perdure", *args, env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


async def _measure(app: perdure.App, quick: bool) -> tuple[float, float, float]:
    """W1 runs/s, W5 p50 and p95 (ms), against whichever worker is running."""
    three, single = app.get_task("three"), app.get_task("single")
    runs = 200 if quick else 500
    start = time.perf_counter()
    handles = await asyncio.gather(*(three.trigger(i) for i in range(runs)))
    for handle in handles:
        await handle.result(timeout=300)
    throughput = runs / (time.perf_counter() - start)
    latencies = []
    for i in range(105):
        sent = time.perf_counter()
        await (await single.trigger(i)).result(timeout=60)
        if i >= 5:
            latencies.append((time.perf_counter() - sent) * 1000)
    latencies.sort()
    return throughput, statistics.median(latencies), latencies[94]


async def hybrid_workers(database: str, workdir: Path, quick: bool) -> list[Metric]:
    blobs = f"file://{workdir}/blobs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERDURE_BLOB_URL": blobs}
    app = perdure.App("bench", database=database, blobs=blobs)

    async def three(i: int) -> int:
        raise AssertionError("run by the worker processes")

    async def single(i: int) -> int:
        raise AssertionError("run by the worker processes")

    app.task(name="three")(three)
    app.task(name="single")(single)
    _record, key = await app.admin.create_api_key(name="bench", scope="worker")
    results: dict[str, tuple[float, float, float]] = {}
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = await _spawn(
        "server",
        SPEC,
        "--port",
        str(port),
        "--log-level",
        "warning",
        env={**env, "PERDURE_DATABASE_URL": database},
    )
    try:
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        for kind, extra in (
            ("direct", {"PERDURE_DATABASE_URL": database}),
            ("hybrid", {"PERDURE_SERVER_URL": url, "PERDURE_API_KEY": key}),
        ):
            worker = await _spawn("worker", SPEC, "--concurrency", "50", env={**env, **extra})
            while not await app.store.live_workers(app="bench"):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
            results[kind] = await _measure(app, quick)
            await _stop(worker)
    finally:
        await _stop(server)
        await app.close()
    metrics: list[Metric] = []
    for kind, (throughput, p50, p95) in results.items():
        metrics += [
            {"workload": "HYBRID", "metric": f"w1_runs_per_s_{kind}", "value": throughput},
            {"workload": "HYBRID", "metric": f"w5_p50_ms_{kind}", "value": p50},
            {"workload": "HYBRID", "metric": f"w5_p95_ms_{kind}", "value": p95},
        ]
    return metrics
