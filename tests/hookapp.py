"""An app for hook tests with real processes: `gated` records a step, then runs a step that
waits while the file $HOOKS_GATE exists (a test kills the worker there); every hook appends
"EVENT RUN PID" to $HOOKS_LOG, and every step body "step N PID"."""

from __future__ import annotations

import asyncio
import os

import perdure

app = perdure.App("hooked")


def _log(line: str) -> None:
    with open(os.environ["HOOKS_LOG"], "a") as f:
        f.write(f"{line} {os.getpid()}\n")


@app.step(name="numbered")
async def numbered(n: int) -> int:
    _log(f"step {n}")
    gate = os.environ.get("HOOKS_GATE", "")
    if n == 2:
        while gate and os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 - a test's gate file
            await asyncio.sleep(0.01)
    return n


@app.task(name="gated")
async def gated() -> int:
    return await numbered(1) + await numbered(2)


@gated.on_start
@gated.on_resume
@gated.on_success
async def record(event: perdure.Lifecycle) -> None:
    _log(f"{event.event} {event.run_id}")
