"""The run context: what a task's code sees while it runs on a worker (the journal cursor,
the pending recorded values, the lease), reachable from steps and waits through a ContextVar."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from perdure import serde
from perdure.config import WorkerConfig
from perdure.errors import CancelSignal, NonDeterminismError, TooManySteps
from perdure.records import Attempt, EntryKind, EntryStatus, JournalEntry, RunRecord, Value
from perdure.retry import Retry
from perdure.store.base import Store
from perdure.worker import RunControl

log = logging.getLogger("perdure.run")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """What the runtime needs to know about a task to execute it."""

    name: str
    """Registered name."""
    retry: Retry
    """Task-level retry policy."""
    timeout: float | None
    """Seconds one attempt may run on a worker; None for no limit."""
    codec: serde.Codec
    """Codec of every value the task's runs store."""
    max_value_size: int
    """Encoded values above this many bytes are refused (PayloadTooLarge)."""
    max_steps: int | None = None
    """Journal positions a run may take (None: no bound); past it, TooManySteps."""


@dataclass(slots=True, kw_only=True)
class RunContext:
    """The state of one execution of one run on one worker."""

    run: RunRecord
    """The claimed run (its lease fences every write)."""
    task: TaskOptions
    """The task being run."""
    store: Store
    """Where the journal lives."""
    control: RunControl
    """Stop requests from the worker."""
    config: WorkerConfig
    """Worker settings."""
    loop: asyncio.AbstractEventLoop
    """The worker's event loop (sync tasks run in threads and call back into it)."""
    journal: dict[int, JournalEntry]
    """Finished entries by seq, loaded at claim."""
    step_attempts: dict[int, int]
    """Attempts already made in this task attempt, by seq (for steps retried across suspends)."""
    seq: int = 0
    """The last seq handed out."""
    awaited_children: int = 0
    """Child runs triggered to be awaited so far (a wait for children ends once the store has
    counted this many ends)."""
    pending: list[JournalEntry] = field(default_factory=list)
    """Journal entries not yet written (step results, recorded values, sleeps). They are written
    before the next step body starts (flush) or with the run's transition, whichever is first."""
    pending_attempts: list[Attempt] = field(default_factory=list)
    """Attempt records not yet written; they travel with `pending`."""
    flushing: asyncio.Future[None] | None = None
    """The last flush, which later step bodies wait for too."""
    closed: bool = False
    """Set when the execution ended; late step calls (orphans of a gather) then stop."""

    def next_seq(self) -> int:
        """The next journal position, in call order."""
        limit = self.task.max_steps
        if limit is not None and self.seq >= limit:
            raise TooManySteps(
                f"run {self.run.id} (task {self.task.name!r}) reached its max_steps of {limit} "
                "journal positions (steps, sleeps, recorded values, child triggers); raise the "
                "task's max_steps, or make the loop end"
            )
        self.seq += 1
        return self.seq

    def take_pending(self) -> tuple[list[JournalEntry], list[Attempt]]:
        """Hand the pending entries and attempts to a write."""
        pending, self.pending = self.pending, []
        attempts, self.pending_attempts = self.pending_attempts, []
        return pending, attempts

    async def flush(self) -> None:
        """Write-ahead: make every pending record durable before a step body (a side effect
        that may depend on them) starts. Concurrent steps share the flush in flight."""
        if self.pending or self.pending_attempts:
            entries, attempts = self.take_pending()
            self.flushing = asyncio.ensure_future(
                self.store.append(self.run.id, self.run.held, entries=entries, attempts=attempts)
            )
        if self.flushing is not None:
            await asyncio.shield(self.flushing)

    def check_active(self) -> None:
        """Stop the run here if it was cancelled, released or has ended."""
        if self.closed or self.control.stop_reason is not None:
            raise CancelSignal(self.control.stop_reason or "closed")

    def recorded(self, seq: int, kind: EntryKind, name: str) -> JournalEntry | None:
        """The entry recorded at `seq`, after checking that it is the same call."""
        entry = self.journal.get(seq)
        if entry is None:
            return None
        if entry.kind != kind or entry.name != name:
            raise NonDeterminismError(
                f"run {self.run.id} (task {self.task.name!r}): at journal position {seq} the "
                f"task now calls {kind} {name!r}, but the journal recorded {entry.kind} "
                f"{entry.name!r}. The task's code changed under a running run, or it branches "
                "on something unrecorded; use perdure.now()/uuid4()/random() for such values."
            )
        return entry

    async def offload(self, entry: JournalEntry) -> JournalEntry:
        """Put a large value in the blob store now, inside the step's attempt: a blob store
        failure is then a failed attempt (retried by the step's policy), and no journal entry
        can point at a blob that was not written."""
        value = await self.store.offload(entry.value)
        return entry if value is entry.value else replace(entry, value=value)

    def value_entry(
        self, seq: int, kind: EntryKind, name: str, value: Any, started: float
    ) -> tuple[JournalEntry, bytes]:
        """A completed entry holding `value`, and its encoding."""
        data = serde.encode(
            value,
            codec=self.task.codec,
            what=f"{kind} {name!r}",
            max_size=self.task.max_value_size,
        )
        entry = JournalEntry(
            seq=seq,
            kind=kind,
            name=name,
            status=EntryStatus.COMPLETED,
            value=Value(codec=str(self.task.codec), data=data, raw_size=len(data)),
            started_at=started,
            finished_at=self.store.now(),
        )
        return entry, data


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "perdure_run", default=None
)


@dataclass(frozen=True, slots=True)
class ActiveStep:
    """The step whose body is running (in this context)."""

    name: str
    """Step name."""
    key: str
    """`run id:journal position`: the same for every attempt and replay of this step call."""


_in_step: contextvars.ContextVar[ActiveStep | None] = contextvars.ContextVar(
    "perdure_step", default=None
)


def current() -> RunContext | None:
    """The run context of the calling code, or None outside a run."""
    return _current.get()


def in_step() -> bool:
    """True inside a step body (where durable calls are plain calls)."""
    return _in_step.get() is not None


def activate(ctx: RunContext) -> contextvars.Token[RunContext | None]:
    """Make `ctx` the current run context."""
    return _current.set(ctx)


def decode_entry(ctx: RunContext, entry: JournalEntry, type_: Any) -> Any:
    """The value recorded in `entry`, decoded to `type_`."""
    assert entry.value is not None
    return serde.decode(
        entry.value.data,
        codec=serde.Codec(entry.value.codec),
        type_=type_,
        what=f"run {ctx.run.id} journal position {entry.seq} ({entry.kind} {entry.name!r})",
    )


def in_thread_of_loop(ctx: RunContext) -> bool:
    """True when called on the worker's event loop thread (async code)."""
    try:
        return asyncio.get_running_loop() is ctx.loop
    except RuntimeError:
        return False
