"""An app for crash tests: every step appends a line to $CRASH_LOG before and after its body.

Steps are sync (they run in the worker's thread pool). Step N and later wait while the file
$CRASH_GATE exists (N = $CRASH_GATE_STEP), so a test can kill the worker at a known point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import perdure

app = perdure.App("crash")


def _log(line: str) -> None:
    with open(os.environ["CRASH_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@app.step(name="work", retry=perdure.Retry(max_attempts=1))
def work(run_key: str, index: int, delay: float) -> str:
    _log(f"start {run_key} {index} {time.time():.6f}")
    gate = os.environ.get("CRASH_GATE")
    while gate and Path(gate).exists() and index >= int(os.environ.get("CRASH_GATE_STEP", "0")):
        time.sleep(0.01)
    if delay:
        time.sleep(delay)
    _log(f"done {run_key} {index} {time.time():.6f}")
    return f"{run_key}:{index}"


@app.task(name="pipeline")
async def pipeline(run_key: str, steps: int, delay: float = 0.0) -> list[str]:
    results = []
    for index in range(1, steps + 1):
        results.append(await work(run_key, index, delay))
    return results
