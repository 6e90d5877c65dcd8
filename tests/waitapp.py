"""An app for wait tests with real processes: each run records a step, waits for its token
"approval", then records another; every step body appends a line to $CRASH_LOG."""

from __future__ import annotations

import logging
import os
from typing import Any

import perdure

app = perdure.App("waits")


def _log(line: str) -> None:
    with open(os.environ["CRASH_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@app.step(name="mark")
async def mark(key: str, what: str) -> str:
    _log(f"{what} {key} {os.getpid()}")
    return what


@app.task(name="approval")
async def approval(key: str) -> Any:
    await mark(key, "asked")
    decision = await perdure.wait_for_token("approval", timeout=600)
    await mark(key, "decided")
    return decision


@app.task(name="chat")
async def chat(turns: int) -> list[Any]:
    return [await perdure.receive("chat", timeout=600) for _ in range(turns)]


@app.task(name="narrate")
async def narrate(words: list[str]) -> int:
    for i, word in enumerate(words):
        await perdure.stream("words", word)
        perdure.metadata.set("said", i + 1)
    await perdure.wait_for_token("more", timeout=600)
    await perdure.stream("words", "end")
    return len(words) + 1


@app.task(name="add")
async def add(a: int, b: int) -> int:
    return a + b


@app.task(name="tick")
async def tick(scheduled_at: Any) -> str:
    return str(scheduled_at)


@app.task(name="got")
async def got(payload: Any) -> Any:
    return payload


app.webhook("orders", secret="ORDERS_WEBHOOK_SECRET", task="got")
app.webhook("stripe", secret="STRIPE_WEBHOOK_SECRET", task="got", preset="stripe")
app.webhook("github", secret="GITHUB_WEBHOOK_SECRET", task="got", preset="github")


@app.task(name="fragile", retry=perdure.Retry(max_attempts=1))
async def fragile(fixed_if: str) -> str:
    """Fails until the file `fixed_if` exists (the fix deployed): a run to replay."""
    if not os.path.exists(fixed_if):  # noqa: ASYNC240 - one stat of a test's file
        logging.getLogger("tests.waitapp").warning("%s is missing", fixed_if)
        raise RuntimeError(f"broken until {fixed_if} exists")
    return "fixed"
