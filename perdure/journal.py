"""The journal of a run, as one execution sees it: what earlier executions recorded, replayed by
position; the positions this execution hands out, in call order; and what it records, pending
until the next write.

Every durable call of a task's body takes the next position when it is *called* (so
`asyncio.gather` over steps numbers them deterministically), then either finds its entry —
checked to be the same kind of call with the same name, else NonDeterminismError — and replays
it, or runs and records one. Steps, sleeps, recorded now/uuid4/random and child runs all go
through here. Records are written ahead of the next step body (flush: a side effect never runs
before what it may depend on is durable) or with the run's transition, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from perdure import serde, values
from perdure.errors import (
    CorruptJournal,
    HistoryEnd,
    InvalidArguments,
    NonDeterminismError,
    NonRetryableError,
    PayloadTooLarge,
    SecretLeakError,
    SerializationError,
    StepFailed,
    TooManySteps,
)
from perdure.records import (
    Attempt,
    EntryKind,
    EntryStatus,
    ErrorInfo,
    History,
    JournalEntry,
    RunRecord,
    Value,
)
from perdure.retry import Retry
from perdure.secrets import redact
from perdure.store.base import Store

log = logging.getLogger("perdure.run")

T = TypeVar("T")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NOT_RETRYABLE = (
    NonRetryableError,
    InvalidArguments,
    PayloadTooLarge,
    SerializationError,
    SecretLeakError,
    NonDeterminismError,
    CorruptJournal,
)


class Journal:
    """One execution's view of a run's journal."""

    def __init__(
        self,
        store: Store,
        run: RunRecord,
        *,
        task: str,
        codec: serde.Codec,
        max_value_size: int,
        max_steps: int | None,
        history: History | None = None,
        check_only: bool = False,
    ) -> None:
        self.store = store
        self.run = run
        self.task = task
        self.codec = codec
        self.max_value_size = max_value_size
        self.max_steps = max_steps
        self.entries: dict[int, JournalEntry] = {}
        """Entries recorded by earlier executions, by position."""
        self.step_attempts: dict[int, int] = {}
        """Attempts already made at each position in this task attempt (a step retried across
        suspensions goes on counting)."""
        if history is not None:
            self.entries = {entry.seq: entry for entry in history.journal}
            for attempt in history.attempts:
                if attempt.run_attempt == run.attempt and attempt.seq > 0:
                    self.step_attempts[attempt.seq] = max(
                        self.step_attempts.get(attempt.seq, 0), attempt.attempt
                    )
        self.last_recorded = max(self.entries, default=0)
        """The last position earlier executions recorded."""
        self.check_only = check_only
        """A replay check: every call must be replayed; the first one the journal has no record
        of ends the check (HistoryEnd), and nothing is ever recorded."""
        self.replayed: set[int] = set()
        """The recorded positions this execution replayed (a replay check compares them with
        what is recorded)."""
        self.seq = 0
        """The last position handed out."""
        self.awaited_children = 0
        """Child runs triggered to be awaited so far (a wait for children ends once the store
        has counted this many ends)."""
        self.pending: list[JournalEntry] = []
        """Entries recorded and not yet written."""
        self.pending_attempts: list[Attempt] = []
        """Attempt records not yet written; they travel with `pending`."""
        self.flushing: asyncio.Future[None] | None = None
        """The last write-ahead of records, which later step bodies wait for too."""

    # -- positions and replay ----------------------------------------------------------------

    def next_seq(self) -> int:
        """The next journal position, in call order; TooManySteps past the task's max_steps."""
        if self.max_steps is not None and self.seq >= self.max_steps:
            raise TooManySteps(
                f"run {self.run.id} (task {self.task!r}) reached its max_steps of "
                f"{self.max_steps} journal positions (steps, sleeps, recorded values, child "
                "triggers); raise the task's max_steps, or make the loop end"
            )
        self.seq += 1
        return self.seq

    def recorded(self, seq: int, kind: EntryKind, name: str) -> JournalEntry | None:
        """The entry recorded at `seq`, after checking that it is the same call."""
        entry = self.entries.get(seq)
        if entry is None:
            if self.check_only:
                raise HistoryEnd(seq)
            return None
        if entry.kind != kind or entry.name != name:
            raise NonDeterminismError(
                f"run {self.run.id} (task {self.task!r}): at journal position {seq} the "
                f"task now calls {kind} {name!r}, but the journal recorded {entry.kind} "
                f"{entry.name!r}. The task's code changed under a running run, or it branches "
                "on something unrecorded (use perdure.now()/uuid4()/random() for such values, "
                "perdure.patched() to change code under running runs).",
                run_id=self.run.id,
                seq=seq,
                called=f"{kind} {name}",
                recorded=f"{entry.kind} {entry.name}",
            )
        self.replayed.add(seq)
        return entry

    def patched(self, patch_id: str) -> bool:
        """perdure.patched: False where the journal was recorded without the patch (the call
        takes no position then: the old code had none there), True otherwise (recorded, so
        every later replay takes the same path)."""
        seq = self.seq + 1
        entry = self.entries.get(seq)
        if entry is None and seq <= self.last_recorded:
            return False  # recorded around a call that never ended: the old code was here
        if entry is not None and not (entry.kind is EntryKind.PATCH and entry.name == patch_id):
            return False  # the old code's call is recorded here
        self.next_seq()
        if entry is not None:
            self.replayed.add(seq)
        elif not self.check_only:
            self.record(self.entry(seq, EntryKind.PATCH, patch_id, True, self.store.now())[0])
        return True

    def decode(self, entry: JournalEntry, type_: Any) -> Any:
        """The value recorded in `entry`, decoded to `type_`."""
        assert entry.value is not None
        return serde.decode(
            entry.value.data,
            codec=serde.Codec(entry.value.codec),
            type_=type_,
            what=f"run {self.run.id} journal position {entry.seq} ({entry.kind} {entry.name!r})",
        )

    def replay_or_record(self, kind: EntryKind, name: str, make: Callable[[], T], type_: Any) -> T:
        """The value of the call at the next position: recorded, or made by `make` now and
        recorded (then decoded, so the first execution sees what a replay will)."""
        seq = self.next_seq()
        entry = self.recorded(seq, kind, name)
        if entry is None:
            entry, _data = self.entry(seq, kind, name, make(), self.store.now())
            self.record(entry)
        value: T = self.decode(entry, type_)
        return value

    # -- recording ---------------------------------------------------------------------------

    def entry(
        self,
        seq: int,
        kind: EntryKind,
        name: str,
        value: Any,
        started: float,
        *,
        attempt: tuple[int, float] | None = None,
    ) -> tuple[JournalEntry, bytes]:
        """A completed entry holding `value` (encoded under the task's codec and limits), and
        its encoding; for a step, with its `attempt` (number, start) that produced the value."""
        data = values.encode(
            value, codec=self.codec, what=f"{kind} {name!r}", max_size=self.max_value_size
        )
        now = self.store.now()
        entry = JournalEntry(
            seq=seq,
            kind=kind,
            name=name,
            status=EntryStatus.COMPLETED,
            value=Value(codec=self.codec.value, data=data, raw_size=len(data)),
            started_at=started,
            finished_at=now,
            attempt=None if attempt is None else self.attempt(seq, *attempt, finished=now),
        )
        return entry, data

    def failed(
        self, seq: int, kind: EntryKind, name: str, error: ErrorInfo, started: float
    ) -> None:
        """Record the final error of the call at `seq`."""
        self.record(
            JournalEntry(
                seq=seq,
                kind=kind,
                name=name,
                status=EntryStatus.FAILED,
                error=error,
                started_at=started,
                finished_at=self.store.now(),
            )
        )

    def record(self, entry: JournalEntry) -> None:
        """Record `entry` (written with the next flush or the run's transition)."""
        self.pending.append(entry)

    def attempt(
        self,
        seq: int,
        attempt: int,
        started: float,
        error: ErrorInfo | None = None,
        *,
        finished: float | None = None,
    ) -> Attempt:
        """An attempt of the call at `seq` (in the run's current task attempt), ending now (or
        at `finished`)."""
        return Attempt(
            run_id=self.run.id,
            run_attempt=self.run.attempt,
            seq=seq,
            attempt=attempt,
            started_at=started,
            finished_at=self.store.now() if finished is None else finished,
            error=error,
        )

    def record_attempt(self, attempt: Attempt) -> None:
        """Record a failed attempt (the call is retried, or fails)."""
        self.pending_attempts.append(attempt)

    async def offload(self, entry: JournalEntry) -> JournalEntry:
        """Put a large value in the blob store now, inside the step's attempt: a blob store
        failure is then a failed attempt (retried by the step's policy), and no journal entry
        can point at a blob that was not written."""
        value = await self.store.offload(entry.value)
        return entry if value is entry.value else replace(entry, value=value)

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
        flushing = self.flushing
        if flushing is not None:
            await asyncio.shield(flushing)
            if self.flushing is flushing:
                # written: nothing to wait for any more (and the task, whose context holds the
                # run's, no longer keeps the run's objects in a cycle for the collector)
                self.flushing = None


def error_info(
    exc: BaseException, *, retryable: bool | None = None, policy: Retry | None = None
) -> ErrorInfo:
    """An exception as recorded; retryable unless perdure knows retrying cannot help, or the
    retry `policy` (its retry_on, dont_retry_on, should_retry) says no."""
    cls = type(exc)
    if retryable is None:
        retryable = not isinstance(exc, _NOT_RETRYABLE) and not (
            isinstance(exc, StepFailed) and not exc.retryable
        )
        if retryable and policy is not None:
            try:
                retryable = policy.allows(exc)
            except Exception:
                log.exception("Retry.should_retry raised; the error is not retried")
                retryable = False
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next  # perdure's own frames say nothing about the user's error
    return ErrorInfo(
        type=f"{cls.__module__}.{cls.__qualname__}",
        message=redact(str(exc)),  # errors are stored: never with a secret's value in them
        traceback=redact("".join(traceback.format_exception(cls, exc, tb or exc.__traceback__))),
        retryable=retryable,
    )


def step_failed(name: str, info: ErrorInfo | None) -> StepFailed:
    """The StepFailed a task sees for a step whose final error is `info` (first time and on
    every replay alike)."""
    if info is None:
        info = ErrorInfo(type="unknown", message="no error recorded")
    return StepFailed(
        f"step {name!r} failed: {info.type.rsplit('.', 1)[-1]}: {info.message}",
        step=name,
        error_type=info.type,
        error_message=info.message,
        traceback=info.traceback,
        retryable=info.retryable,
    )


def reused_children(entries: list[JournalEntry], before: int, *, run_id: str) -> int:
    """For a replay that reuses the entries of positions below `before`: the awaited child runs
    among them (the new run counts them as ended from its start). InvalidArguments where the cut
    would part a wait for children from their trigger (the new run would wait for runs that are
    not its own)."""
    by_seq = {entry.seq: entry for entry in entries}
    counted = 0
    for entry in entries:
        if entry.seq >= before or entry.kind is not EntryKind.CHILDREN or entry.value is None:
            continue
        ids, awaited = serde.decode(
            entry.value.data,
            codec=serde.Codec(entry.value.codec),
            type_=tuple[list[str], bool],
            what=f"run {run_id} journal position {entry.seq}",
        )
        if not awaited:
            continue
        results = by_seq.get(entry.seq + 1)  # (a trigger and its wait take two positions)
        waited = results is not None and results.kind is EntryKind.CHILD_RESULTS
        if entry.seq + 1 >= before or not waited:
            raise InvalidArguments(
                f"run {run_id}: position {entry.seq} triggered {len(ids)} child run(s) whose "
                f"results are not among the positions reused; replay from position {entry.seq} "
                f"(trigger them again) or from {entry.seq + 2} (reuse their results)"
            )
        counted += len(ids)
    return counted
