"""What the adapters share: model and tool calls as steps named for what they call, values
made recordable the same way for all, and approvals as token waits."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import perdure
from perdure.context import current
from perdure.retry import Retry
from perdure.step import Step

T = TypeVar("T")

MODEL_RETRY = Retry(max_attempts=3, min_timeout=1.0, max_timeout=30.0)
"""Retries of a model call's step: a provider's brief outage or rate limit is retried by perdure
(the attempts recorded); the framework sees the call fail only when they are spent."""

APPROVALS = "perdure.approvals"
"""The run's metadata key listing the tool calls that wait for a person's decision."""


async def as_step(name: str, call: Callable[[], Awaitable[T]], *, retry: Retry | None) -> T:
    """`call()` as the step `name` of the current run (outside a run, or inside a step: a plain
    call). The step's position is taken when this is called, so calls started together (a
    framework's gather over tool calls) keep their order on every replay."""
    step: Step[[], Awaitable[T]] = Step(call, name=name, retry=retry, timeout=None)
    return await step()


def plain(value: Any) -> Any:
    """`value` as it will be recorded and replayed: a pydantic model or a dataclass as its JSON
    form (so the first run and a replay hand the framework the same thing)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def in_run() -> bool:
    """Whether the caller is inside a perdure run."""
    return current() is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """A person's answer to an approval: the token's completion data, read leniently (`true`,
    `false`, or `{"approved": bool, "message": str}`)."""

    approved: bool
    message: str | None = None

    @classmethod
    def of(cls, data: Any) -> Decision:
        if isinstance(data, dict):
            message = data.get("message")
            return cls(bool(data.get("approved", False)), None if message is None else str(message))
        return cls(bool(data))


def approval_token(call_id: str) -> str:
    """The name of the token a tool call's approval waits on: `approve:<call id>`."""
    return f"approve:{call_id}"


async def ask(token: str, about: dict[str, Any], *, timeout: float | None) -> Any:
    """Wait (suspended) on the run's token `token` and return its completion data; while it
    waits, `about` (with the token's name) is listed in the run's metadata under
    "perdure.approvals", so a person (or the dashboard, or a script) can see what is asked and
    answer it: `handle.complete_token(token, data)`, `perdure tokens complete`, the API.
    WaitTimeout after `timeout` seconds."""
    entry = {"token": token, **about}
    waiting = [p for p in perdure.metadata.get(APPROVALS, []) if p["token"] != token]
    perdure.metadata.set(APPROVALS, [*waiting, entry])
    data = await perdure.wait_for_token(token, timeout=timeout)
    left = [p for p in perdure.metadata.get(APPROVALS, []) if p["token"] != token]
    perdure.metadata.set(APPROVALS, left)
    return data


async def approve(call_id: str, tool: str, arguments: Any, *, timeout: float | None) -> Decision:
    """A person's decision on the tool call `call_id`, asked on the token `approve:<call id>`
    (answered with true/false or {"approved": …, "message": …})."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else shown as the model gave it
            arguments = json.loads(arguments)
    about = {"tool": tool, "arguments": arguments}
    return Decision.of(await ask(approval_token(call_id), about, timeout=timeout))
