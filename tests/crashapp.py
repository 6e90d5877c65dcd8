"""An app for crash tests: every step appends a line to $CRASH_LOG before and after its body.

Step N and later wait while the file
$CRASH_GATE exists (N = $CRASH_GATE_STEP), so a test can kill the worker at a known point.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import perdure
from perdure.context import current

app = perdure.App("crash")


def _now() -> float:
    """The store's clock inside a run (workers whose clocks are moved agree on it)."""
    ctx = current()
    return ctx.store.now() if ctx is not None else time.time()


_RECORD = re.compile(r"(start|done) (\S+) (\d+) (\d+\.\d+)(?: (\d+))?\n")


def records(log: Path) -> list[list[Any]]:
    """The records of a side-effect log, each [event, run key, step, time, pid or None]. A process
    killed in the middle of appending its line (a write crossing a page can stop short) leaves
    a partial record that the next one's line runs on from: it is skipped, the next is read."""
    if not log.exists():
        return []
    return [list(m.groups()) for m in _RECORD.finditer(log.read_text())]


def starts(log: Path, key: str, index: int) -> int:
    """How many times step `index` of run `key` started, by the log."""
    return sum(r[:3] == ["start", key, str(index)] for r in records(log))


def _log(line: str) -> None:
    with open(os.environ["CRASH_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _gated(index: int) -> bool:
    gate = os.environ.get("CRASH_GATE")
    return (
        bool(gate)
        and index >= int(os.environ.get("CRASH_GATE_STEP", "0"))
        and Path(str(gate)).exists()
    )


@app.step(name="work", retry=perdure.Retry(max_attempts=1))
async def work(run_key: str, index: int, pause: float) -> str:
    _log(f"start {run_key} {index} {_now():.6f} {os.getpid()}")
    while _gated(index):  # noqa: ASYNC110 - the gate is a file another process removes
        await asyncio.sleep(0.01)
    if pause:
        await asyncio.sleep(pause)
    _log(f"done {run_key} {index} {_now():.6f} {os.getpid()}")
    return f"{run_key}:{index}"


async def _task_gate(index: int) -> None:
    """In the task body, before step $CRASH_TASK_GATE_STEP: say so (a file beside the gate)
    and wait while the file $CRASH_TASK_GATE exists."""
    gate = os.environ.get("CRASH_TASK_GATE")
    if gate and index == int(os.environ.get("CRASH_TASK_GATE_STEP", "0")):
        Path(gate + ".reached").touch()  # noqa: ASYNC240 - a test's marker
        while os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 - a file another process removes
            await asyncio.sleep(0.01)


@app.task(name="pipeline")
async def pipeline(run_key: str, steps: int, pause: float = 0.0) -> list[str]:
    results = []
    for index in range(1, steps + 1):
        await _task_gate(index)
        results.append(await work(run_key, index, pause))
    return results


@app.task(name="looping")
async def looping(run_key: str, done: int, turns: int, every: int, pause: float = 0.0) -> int:
    """A looping agent: turn N is step `work` with index N; every `every` turns it continues
    as a new run."""
    while done < turns:
        await work(run_key, done + 1, pause)
        done += 1
        if done % every == 0 and done < turns:
            perdure.continue_as_new(run_key, done, turns, every, pause)
    return done


@app.step(name="hog", retry=perdure.Retry(max_attempts=1))
async def hog(run_key: str, seconds: float) -> str:
    """Blocks the worker's event loop (a sync call in async code: a bug, but a common one)."""
    _log(f"start {run_key} 1 {time.time():.6f}")
    time.sleep(seconds)  # noqa: ASYNC251 - on purpose
    _log(f"done {run_key} 1 {time.time():.6f}")
    return run_key


@app.task(name="hogging")
async def hogging(run_key: str, seconds: float) -> str:
    return await hog(run_key, seconds)


@app.task(name="nap")
async def nap(seconds: float) -> str:
    """A durable sleep."""
    await perdure.sleep(seconds)
    return "woke"


@app.step(name="stuck", retry=perdure.Retry(max_attempts=1), timeout=0.1)
def stuck(seconds: float) -> str:
    """A sync step that outlasts its timeout (sync code cannot be interrupted)."""
    time.sleep(seconds)
    return "finished"


@app.task(name="stuck_task")
async def stuck_task(seconds: float) -> str:
    try:
        result: str = await stuck(seconds)  # type: ignore[misc]
    except perdure.errors.StepFailed:
        return "timed out"
    return result


LIMIT = 4
"""Runs of the limited app's queue running at once, over every worker."""

limited = perdure.App("crash-limited")
"""The same pipeline on a queue with a concurrency limit (the chaos harness checks it holds)."""
limited.queue("limited", concurrency=LIMIT)
limited.task(name="pipeline", queue="limited")(pipeline.fn)


def payload(seed: str, size: int) -> bytes:
    """`size` bytes that do not compress, the same for the same seed."""
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


@app.step(name="big")
async def big(seed: str, size: int) -> bytes:
    return payload(seed, size)


@app.task(name="bigs")
async def bigs(seed: str, size: int) -> str:
    """Two large step results (over the inline limit: blobs); their digest."""
    first = await big(f"{seed}-1", size)
    second = await big(f"{seed}-2", size)
    return hashlib.sha256(first + second).hexdigest()
