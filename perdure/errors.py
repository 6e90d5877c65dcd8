"""Every error perdure raises, under one base class.

```
PerdureError
├── ConfigurationError          bad App / worker settings, unknown URL scheme
├── TaskNotFound                trigger of a task the app does not know
├── InvalidArguments            trigger arguments that do not fit the task's signature
├── RunNotFound                 no run with that id
├── RunTimeout                  RunHandle.result(timeout=) ran out
├── TaskFailed                  the run failed for good (RunHandle.result)
├── RunCancelled                the run was cancelled (RunHandle.result)
├── StepFailed                  a step spent its retries (raised in the task, live and on replay)
├── StepTimeout                 one attempt of a step or task ran over its timeout
├── RetryAfter                  raise it to retry after a given delay (a rate limit's)
├── NonRetryableError           raise it (or perdure.NonRetryable(exc)) to stop retries
│   ├── StepExited              a step or task raised SystemExit / KeyboardInterrupt
│   └── TooManySteps            a run went past its task's max_steps
├── NonDeterminismError         replay met a different step than the journal recorded
├── SerializationError          a value msgspec (or pickle) cannot encode or decode
├── SecretLeakError             a Secret, or a secret's value, was about to be stored
├── PayloadTooLarge             a value over the configured hard limit
├── CorruptJournal              a journal row that cannot be read back
├── LeaseLost                   this worker no longer owns the run (another worker took it)
└── StoreError
    ├── StoreUnavailable        the database cannot be reached
    ├── StoreRefused            the database refused a write that retrying cannot fix
    ├── SchemaTooNew            the database was migrated by a newer perdure
    └── SchemaOutdated          the database needs `perdure migrate`
```

Control-flow signals (`Suspend`, `CancelSignal`) derive from `BaseException`, so user code
catching `Exception` cannot swallow them.
"""

from __future__ import annotations

import json
from typing import Any


class PerdureError(Exception):
    """A perdure error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or type(self).__name__).strip())


class ConfigurationError(PerdureError):
    """perdure is configured wrongly."""


class TaskNotFound(PerdureError):
    """No task of that name is registered in this app."""


class InvalidArguments(PerdureError, TypeError):
    """The trigger arguments do not fit the task's signature or its parameters' types."""


class RunNotFound(PerdureError):
    """No run with that id exists."""


class RunTimeout(PerdureError):
    """The run did not finish within the timeout given to result()."""


class TaskFailed(PerdureError):
    """The run failed after spending its retries."""

    def __init__(
        self,
        message: str | None = None,
        *,
        run_id: str = "",
        error_type: str = "",
        error_message: str = "",
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class RunCancelled(PerdureError):
    """The run was cancelled."""


class RunExpired(PerdureError):
    """The run was not started within its `ttl`; it never ran."""


class WaitTimeout(PerdureError):
    """A durable wait (for a token, an event or a message) reached its timeout. Raised inside
    the task, where it can be caught; recorded, so a replay raises it again."""


class Unauthorized(PerdureError):
    """No API key, or one that is not valid (unknown, wrong, revoked)."""


class Forbidden(PerdureError):
    """A valid API key whose scope does not allow this."""


class TokenNotFound(PerdureError):
    """No token with that id (or that name in that run)."""


class TokenAlreadyCompleted(PerdureError):
    """The token was completed already (the first completion stands), or timed out."""


class ChildFailed(TaskFailed):
    """A child run did not complete: it failed, was cancelled or expired.

    `trigger_and_wait` raises it; `batch_trigger_and_wait` puts it in the failed child's place
    and keeps the other results. `status` says how the child ended.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        run_id: str = "",
        status: str = "",
        error_type: str = "",
        error_message: str = "",
        traceback: str = "",
    ) -> None:
        super().__init__(
            message,
            run_id=run_id,
            error_type=error_type,
            error_message=error_message,
            traceback=traceback,
        )
        self.status = status

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChildFailed) and (
            self.run_id,
            self.status,
            self.error_type,
            self.error_message,
        ) == (other.run_id, other.status, other.error_type, other.error_message)

    __hash__ = None  # type: ignore[assignment]


class StepFailed(PerdureError):
    """A step failed after spending its retries.

    The same error is raised when the task runs live and when the failure is replayed from the
    journal, so a task that catches it behaves the same on resume.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        step: str = "",
        error_type: str = "",
        error_message: str = "",
        traceback: str = "",
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        self.retryable = retryable


class StepTimeout(PerdureError):
    """An attempt ran over its timeout."""


class RetryAfter(PerdureError):
    """Retry after the given delay: `raise perdure.RetryAfter(30) from exc` when an API asks to
    wait (a 429's Retry-After). The step's policy still decides whether it is retried and how
    often; only the delay comes from here."""

    def __init__(self, seconds: float, message: str | None = None) -> None:
        if seconds < 0:
            raise ValueError(f"RetryAfter needs seconds >= 0, got {seconds}")
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = float(seconds)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.seconds, str(self)))


class NonRetryableError(PerdureError):
    """An error that must not be retried: the step (and the run) fail at once."""


class StepExited(NonRetryableError):
    """A step (or a task body) raised SystemExit or KeyboardInterrupt: code in it tried to end
    the worker process (a library calling sys.exit()). It fails like a non-retryable error, with
    the original exception as its cause; the worker goes on."""


class TooManySteps(NonRetryableError):
    """A run went past its task's `max_steps` journal positions (a loop that does not end)."""


class NonDeterminismError(PerdureError):
    """The task called a different step than the journal recorded at this position.

    The task's code changed while runs were in flight, or it branches on something that is not
    recorded (wall-clock time, randomness, environment). Use perdure.now()/uuid4()/random(),
    and perdure.patched() to change code under running runs.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str = "",
        seq: int = 0,
        called: str = "",
        recorded: str = "",
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq
        """The journal position."""
        self.called = called
        """What the code calls there now ("step NAME", "sleep sleep", ...; "" if nothing)."""
        self.recorded = recorded
        """What the journal recorded there."""


class SerializationError(PerdureError):
    """A value cannot be serialised or deserialised."""


class SecretLeakError(PerdureError):
    """A secret was about to be written to storage."""


class EncryptionError(PerdureError):
    """Encrypted data could not be read (no key, an unknown key, altered data), or there is no
    key to encrypt with."""


class PayloadTooLarge(PerdureError):
    """A value is over the configured size limit."""


class CorruptJournal(PerdureError):
    """A journal row cannot be read back."""


class LeaseLost(PerdureError):
    """This worker no longer holds the run's lease; another worker has taken it over."""


class StoreError(PerdureError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


class StoreRefused(StoreError):
    """The database refused a write that retrying cannot fix: a value too big for it, a
    character it cannot hold (a NUL in a PostgreSQL text), a name over an index's limit. The
    run's attempt fails with this error, and the task's retry policy decides what follows."""


class SchemaTooNew(StoreError):
    """The database schema is newer than this version of perdure understands."""


class SchemaOutdated(StoreError):
    """The database schema is older than this version of perdure; run `perdure migrate`."""


def NonRetryable(exc: BaseException) -> NonRetryableError:
    """Wrap `exc` so that raising the result stops retries: `raise perdure.NonRetryable(e)`."""
    err = NonRetryableError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class Suspend(BaseException):
    """Internal: the run waits (a sleep, children, a token, an event, a message) and leaves the
    worker."""

    def __init__(
        self,
        wake_at: float | None,
        *,
        children: int | None = None,
        waiting_for: str = "sleep",
        signalled: bool = False,
    ) -> None:
        super().__init__(wake_at)
        self.wake_at = wake_at
        self.children = children
        """Waiting for child runs: wake once this many awaited children have ended."""
        self.waiting_for = "children" if children is not None else waiting_for
        """What for (RunRecord.waiting_for)."""
        self.signalled = signalled
        """Waiting for a signal (a token, an event, a message): one sent while the run was
        running makes it claimable again at once."""


class CancelSignal(BaseException):
    """Internal: the run was cancelled while it executed."""


class ContinueAsNew(BaseException):
    """Internal: the run ends here and continues as a new run of its task with these
    arguments (perdure.continue_as_new)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("continue as new")
        self.args_ = args
        self.kwargs = kwargs


class HistoryEnd(BaseException):
    """Internal: a replay check reached a call its journal has no record of (from there on, a
    worker would run the code, not replay it)."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def from_name(kind: str, message: str) -> PerdureError:
    """The perdure error named `kind` (its class's name, as a server answers it) with
    `message`; PerdureError when no such class takes a message alone."""
    cls = globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, PerdureError)):
        return PerdureError(f"{kind}: {message}")
    try:
        return cls(message)
    except TypeError:  # an error class with its own arguments
        return PerdureError(f"{kind}: {message}")


def from_answer(body: bytes, status: int) -> PerdureError:
    """The perdure error in a perdure server's error answer (`{"error": {"type", "message"}}`
    with HTTP `status`), for the Python client and hybrid workers alike."""
    try:
        error = json.loads(body)["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode(errors="replace")
        return PerdureError(f"HTTP {status}: {text}")
    return from_name(kind, message)
