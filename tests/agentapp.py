"""What the agent apps of the adapters' tests share (tests/agent_*.py, one per framework, so a
worker imports only its own): each model call and each tool body appends "WHAT PID" to
$AGENTS_LOG; the `lookup` tool waits while the file $AGENTS_GATE exists (a test kills the
worker there, between two model calls)."""

from __future__ import annotations

import asyncio
import os
from typing import Any


def log(line: str) -> None:
    path = os.environ.get("AGENTS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{line} {os.getpid()}\n")


async def gate() -> None:
    path = os.environ.get("AGENTS_GATE", "")
    while path and os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a test's gate file
        await asyncio.sleep(0.01)


def seen_tool_outputs(items: Any) -> list[str]:
    """The outputs of the tool calls in a model's input (Responses format)."""
    if isinstance(items, str):
        return []
    return [
        str(i["output"])
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]
