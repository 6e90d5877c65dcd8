"""An app for flow-control tests across worker processes: every run appends its start and end
to $FLOW_LOG."""

from __future__ import annotations

import asyncio
import os
import time

import perdure

app = perdure.App("flow")
app.queue("shared", concurrency=3, key_concurrency=1)


def _log(line: str) -> None:
    with open(os.environ["FLOW_LOG"], "a") as f:
        f.write(line + "\n")


@app.task(name="limited", queue="shared")
async def limited(name: str, seconds: float) -> str:
    _log(f"start {name} {time.time():.6f}")
    await asyncio.sleep(seconds)
    _log(f"end {name} {time.time():.6f}")
    return name


@app.task(name="solo", concurrency=1)
async def solo(name: str, seconds: float) -> str:
    _log(f"start {name} {time.time():.6f}")
    await asyncio.sleep(seconds)
    _log(f"end {name} {time.time():.6f}")
    return name


@app.task(name="leaf")
async def leaf(index: int) -> int:
    await asyncio.sleep(0.02)
    _log(f"leaf {index}")
    return index * 2


@app.task(name="fan_out")
async def fan_out(count: int) -> list[int]:
    results = await leaf.batch_trigger_and_wait([(i,) for i in range(count)])
    return [r if isinstance(r, int) else -1 for r in results]
