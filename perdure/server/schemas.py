"""The API's request and response schemas (msgspec structs): they check what comes in, shape
what goes out, and make the OpenAPI document's components."""

from __future__ import annotations

from typing import Any

import msgspec


class TriggerRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Start a run of a task."""

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    idempotency_key: str | None = None
    priority: int = 0
    delay: float | None = None
    ttl: float | None = None
    concurrency_key: str | None = None
    tags: list[str] = []


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Replay a run: a new run of its task, linked to it. `from_step` N reuses the results the
    run recorded before journal position N; `args`/`kwargs` replace its arguments."""

    from_step: int | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


class CompleteTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Complete a token with data."""

    data: Any = None


class SendEventRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Send an event to the app."""

    name: str
    payload: Any = None
    idempotency_key: str | None = None


class SendMessageRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Put a message in a run's mailbox."""

    topic: str
    data: Any = None
    idempotency_key: str | None = None


class RunOut(msgspec.Struct):
    """A run."""

    id: str
    app: str
    task: str
    queue: str
    status: str
    attempt: int
    created_at: float
    worker_id: str | None = None
    idempotency_key: str | None = None
    note: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    available_at: float | None = None
    tags: list[str] = []
    error: dict[str, Any] | None = None
    result: Any = None
    args: Any = None
    version: str | None = None
    replay_of: str | None = None
    continued_as: str | None = None


class RunPage(msgspec.Struct):
    """A page of runs, newest first; `next` is the cursor of the next page (None: the last)."""

    runs: list[RunOut]
    next: str | None


class Triggered(msgspec.Struct):
    """A triggered run (created False: its idempotency key had a run already)."""

    id: str
    created: bool


class ResultOut(msgspec.Struct):
    """A run's outcome, or its status while it has none."""

    id: str
    status: str
    done: bool
    result: Any = None
    error: dict[str, Any] | None = None


class TokenOut(msgspec.Struct):
    """A token."""

    id: str
    app: str
    status: str
    run_id: str | None = None
    name: str | None = None
    tags: list[str] = []
    created_at: float = 0.0
    expires_at: float | None = None
    completed_at: float | None = None


class SentOut(msgspec.Struct):
    """What sending an event did."""

    id: str
    created: bool
    woken: list[str]


class MessageOut(msgspec.Struct):
    """A message sent."""

    id: str


class QueueOut(msgspec.Struct):
    """A queue with its load."""

    app: str
    name: str
    concurrency: int | None
    paused: bool
    running: int
    queued: int


class ScheduleOut(msgspec.Struct):
    """A schedule."""

    app: str
    key: str
    task: str
    cron: str
    tz: str
    paused: bool
    next_at: float
    last_tick: float | None = None


class TaskStatsOut(msgspec.Struct):
    """One task's runs: active now and ended in the window, by status; run duration percentiles
    in seconds (p50, p95, p99); and from the steps of its latest runs (`sampled` of them): step
    call percentiles, retries per step call, steps per minute and stored bytes."""

    task: str
    active: dict[str, int]
    ended: dict[str, int]
    durations: dict[str, float]
    sampled: int = 0
    step_durations: dict[str, float] = {}
    retry_rate: float | None = None
    steps_per_minute: float | None = None
    stored_bytes: int | None = None


class ThroughputOut(msgspec.Struct):
    """Runs that ended in one slice of the window."""

    at: float
    completed: int
    failed: int


class StatsOut(msgspec.Struct):
    """Statistics of the app's runs over a window."""

    since: float
    until: float
    tasks: list[TaskStatsOut]
    bucket: float
    throughput: list[ThroughputOut]


class LogLineOut(msgspec.Struct, omit_defaults=True):
    """A line logged inside a run: when, its level and logger, the message (secret values
    redacted), and the step it came from and the traceback it carried, if any."""

    position: int
    at: float
    level: str
    logger: str
    message: str
    step: str | None = None
    seq: int | None = None
    attempt: int | None = None
    traceback: str | None = None


class ErrorBody(msgspec.Struct):
    """What every error says."""

    type: str
    message: str


class ErrorOut(msgspec.Struct):
    """The one shape of every error response."""

    error: ErrorBody
