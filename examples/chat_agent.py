"""A chat agent whose conversation is one durable run: each turn arrives in the run's mailbox
(`handle.send("chat", ...)`), is answered by a recorded step (an LLM call, paid once even if
the worker dies), and the run waits for the next turn holding no slot. "bye" ends it.

Run it as a demo of its own (a fresh embedded store in a temporary folder):

    python examples/chat_agent.py

or against your store, with a worker:

    perdure worker examples.chat_agent:app
    perdure trigger examples.chat_agent:app chat '["ana"]'      # prints the run id
    # then, from Python: await (await app.handle(RUN_ID)).send("chat", {"text": "hello"})
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

import perdure
from perdure.errors import WaitTimeout

if __name__ == "__main__":  # the demo: its own store in a temporary folder
    _HOME = tempfile.mkdtemp(prefix="perdure-chat-")
    os.environ.setdefault("PERDURE_DATABASE_URL", f"sqlite:///{_HOME}/perdure.db")
    os.environ.setdefault("PERDURE_BLOB_URL", f"file://{_HOME}/blobs")

app = perdure.App("chat")
IDLE_TIMEOUT = 3600.0  # a conversation left alone this long ends


@app.step
async def answer(user: str, history: list[dict[str, str]], text: str) -> str:
    # an LLM call with the conversation so far; recorded, so a crash never pays for it twice
    await asyncio.sleep(0.05)
    if "french" in text.lower():
        return f"Bien sûr, {user} ! (turn {len(history) // 2 + 1})"
    return f"You said {text!r}, {user} (turn {len(history) // 2 + 1})"


@app.task
async def chat(user: str) -> list[dict[str, str]]:
    history: list[dict[str, str]] = []
    while True:
        try:
            turn: dict[str, Any] = await perdure.receive("chat", timeout=IDLE_TIMEOUT)
        except WaitTimeout:
            break
        text = str(turn.get("text", ""))
        if text == "bye":
            break
        reply = await answer(user, history, text)
        history += [{"user": text}, {"agent": reply}]
    return history


async def main() -> None:
    worker = app.worker(concurrency=2)
    running = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        conversation = await chat.trigger("ana")
        for text in ("hello", "and in French?"):
            await conversation.send("chat", {"text": text})
        await conversation.send("chat", {"text": "bye"})  # queued: each turn is taken in order
        for line in await conversation.result(timeout=30):
            ((who, said),) = line.items()
            print(f"  {who:>5}: {said}")
    finally:
        worker.stop()
        await running
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())
