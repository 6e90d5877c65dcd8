"""Tasks (durable workflows): how a run is triggered, from outside a run or from its parent."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from perdure import serde, tracing
from perdure.context import RunContext, TaskOptions, current, in_step
from perdure.errors import (
    ChildFailed,
    ConfigurationError,
    InvalidArguments,
    PerdureError,
    Suspend,
)
from perdure.handle import RunHandle, run_sync
from perdure.hooks import HookDecorators
from perdure.ids import new_id
from perdure.records import EntryKind, ErrorInfo, NewRun, RunRecord, RunStatus, Value
from perdure.retry import DEFAULT_RETRY, Retry
from perdure.taskdef import TaskDef, task_return_type

if TYPE_CHECKING:
    from perdure.app import App

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

TRIGGER_OPTIONS = (
    "idempotency_key",
    "priority",
    "delay",
    "run_at",
    "ttl",
    "concurrency_key",
    "debounce",
    "tags",
    "pin_version",
)
"""Keyword arguments of trigger() that configure the run instead of reaching the task."""
_TAGS = 20  # tags a run may have
_TAG_LENGTH = 128  # characters in a tag


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How a run is started (the keyword options of trigger)."""

    idempotency_key: str | None = None
    """A second trigger with the same key returns the first run."""
    priority: int = 0
    """Higher starts first within its queue."""
    delay: float | None = None
    """Start no sooner than this many seconds from now."""
    run_at: dt.datetime | None = None
    """Start no sooner than this time (timezone-aware, or local time)."""
    ttl: float | None = None
    """Expire (status expired) if not started within this many seconds of the trigger."""
    concurrency_key: str | None = None
    """Runs with the same key share the queue's per-key limit and take turns with other keys."""
    debounce: tuple[str, float] | None = None
    """(key, seconds): triggers with the same key within `seconds` of each other make one run,
    started `seconds` after the last of them, with the last one's arguments."""
    tags: Sequence[str] = ()
    """Tags to find the run by (`perdure runs list --tag`): at most 20, each a non-empty
    string of at most 128 characters."""
    pin_version: str | None = None
    """Only workers of this version of the app's code (App.version) start the run; by default
    the first worker to start it pins it to its own version."""

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> RunOptions:
        """Take the options out of trigger()'s keyword arguments and check them."""
        given = {key: kwargs.pop(key) for key in TRIGGER_OPTIONS if key in kwargs}
        if not given:
            return _DEFAULTS  # (checked once)
        options = cls(**given)
        options.check()
        return options

    def check(self) -> None:
        """InvalidArguments for an option of the wrong type or range."""
        for name, value, types in (
            ("idempotency_key", self.idempotency_key, (str,)),
            ("concurrency_key", self.concurrency_key, (str,)),
            ("pin_version", self.pin_version, (str,)),
            ("priority", self.priority, (int,)),
            ("delay", self.delay, (int, float)),
            ("ttl", self.ttl, (int, float)),
            ("run_at", self.run_at, (dt.datetime,)),
        ):
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                expected = " or ".join(t.__name__ for t in types)
                raise InvalidArguments(f"{name} must be {expected}, got {type(value).__name__}")
        if self.delay is not None and self.run_at is not None:
            raise InvalidArguments("give delay or run_at, not both")
        if isinstance(self.tags, str) or not all(
            isinstance(tag, str) and 0 < len(tag) <= _TAG_LENGTH for tag in self.tags
        ):
            raise InvalidArguments(
                f"tags must be a list of strings of 1 to {_TAG_LENGTH} characters, "
                f"got {self.tags!r}"
            )
        if len(self.tags) > _TAGS:
            raise InvalidArguments(f"a run has at most {_TAGS} tags, got {len(self.tags)}")
        if self.ttl is not None and self.ttl <= 0:
            raise InvalidArguments(f"ttl must be positive, got {self.ttl}")
        if self.debounce is not None:
            if (
                not isinstance(self.debounce, tuple)
                or len(self.debounce) != 2
                or not isinstance(self.debounce[0], str)
                or not isinstance(self.debounce[1], int | float)
                or self.debounce[1] < 0
            ):
                raise InvalidArguments(
                    f"debounce must be (key: str, seconds >= 0), got {self.debounce!r}"
                )
            if self.idempotency_key is not None:
                raise InvalidArguments("give debounce or idempotency_key, not both")

    def new_run(
        self,
        task: Task[Any, Any],
        args: Value,
        *,
        idempotency_key: str | None,
        parent_id: str | None = None,
        awaited: bool = False,
    ) -> NewRun:
        """The run to create (its start and TTL on the store's clock)."""
        now = task.app.store.now()
        start = now
        if self.run_at is not None:
            start = self.run_at.timestamp()
        elif self.delay is not None:
            start = now + max(0.0, self.delay)
        if self.debounce is not None:
            start = max(start, now + self.debounce[1])
        return NewRun(
            id=new_id(),
            app=task.app.name,
            task=task.name,
            queue=task.queue,
            args=args,
            idempotency_key=idempotency_key,
            available_at=start,
            priority=self.priority,
            concurrency_key=self.concurrency_key,
            expires_at=None if self.ttl is None else now + self.ttl,
            debounce_key=None if self.debounce is None else self.debounce[0],
            parent_id=parent_id,
            awaited=awaited,
            tags=list(dict.fromkeys(self.tags)),
            trace_context=tracing.capture(),
            version=self.pin_version,
        )


_DEFAULTS = RunOptions()
_DEFAULTS.check()


class ChildOutcome(msgspec.Struct, frozen=True, array_like=True):
    """How one awaited child ended, as recorded in its parent's journal."""

    status: str
    codec: str | None = None
    data: bytes | None = None
    error: ErrorInfo | None = None


class Task(HookDecorators, Generic[P, R]):
    """A durable workflow. Trigger runs of it; a worker executes them."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, Any],
        *,
        name: str,
        retry: Retry | None,
        queue: str,
        timeout: float | None,
        serializer: str,
        concurrency: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        try:
            codec = serde.Codec(serializer)
        except ValueError:
            raise ConfigurationError(
                f"task {name!r}: serializer must be 'msgpack' or 'pickle', got {serializer!r}"
            ) from None
        self.signature = inspect.signature(fn)
        clash = set(TRIGGER_OPTIONS) & set(self.signature.parameters)
        if clash:
            raise ConfigurationError(
                f"task {name!r} has a parameter named {sorted(clash)[0]!r}, which trigger() "
                "reserves for its own options; rename the parameter"
            )
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.concurrency = concurrency
        self.definition = TaskDef(
            options=TaskOptions(
                name=name,
                retry=retry or DEFAULT_RETRY,
                timeout=timeout,
                codec=codec,
                max_value_size=app.max_value_size,
                max_steps=max_steps,
            ),
            fn=fn,
        )
        self.hooks = self.definition.hooks
        """This task's lifecycle hooks (task.on_failure and the others; the App's run first)."""
        self._result_type: Any = None

    def __repr__(self) -> str:
        return f"<perdure task {self.name!r}>"

    @property
    def result_type(self) -> Any:
        """Type a run's result decodes to."""
        if self._result_type is None:
            self._result_type = task_return_type(self.fn)
        return self._result_type

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the function directly, not durably (for tests and scripts)."""
        return self.fn(*args, **kwargs)

    @overload
    async def trigger(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, idempotency_key: str, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, priority: int, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, delay: float, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, run_at: dt.datetime, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, ttl: float, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, concurrency_key: str, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(
        self, *args: Any, debounce: tuple[str, float], **kwargs: Any
    ) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, tags: Sequence[str], **kwargs: Any) -> RunHandle[R]: ...
    @overload
    async def trigger(self, *args: Any, pin_version: str, **kwargs: Any) -> RunHandle[R]: ...

    async def trigger(self, *args: Any, **kwargs: Any) -> RunHandle[R]:
        """Start a run with these arguments; returns at once with its handle.

        Keywords reserved for the run, not passed to the task (see RunOptions):
        `idempotency_key`, `priority`, `delay` / `run_at`, `ttl`, `concurrency_key`, `tags`,
        `debounce=(key, seconds)`, `pin_version`. Type checkers check the arguments against the
        task's signature (when run options are given too, the arguments are checked at trigger
        time).
        Inside a task the trigger is journaled: a replay returns the same run.
        """
        options = RunOptions.pop(kwargs)
        (handle,), _ = await self._start([(args, kwargs)], options, awaited=False, single=True)
        return handle

    @overload
    def trigger_sync(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, idempotency_key: str, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, priority: int, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, delay: float, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, run_at: dt.datetime, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, ttl: float, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, concurrency_key: str, **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(
        self, *args: Any, debounce: tuple[str, float], **kwargs: Any
    ) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, tags: Sequence[str], **kwargs: Any) -> RunHandle[R]: ...
    @overload
    def trigger_sync(self, *args: Any, pin_version: str, **kwargs: Any) -> RunHandle[R]: ...

    def trigger_sync(self, *args: Any, **kwargs: Any) -> RunHandle[R]:
        """trigger() for synchronous callers."""
        return run_sync(self.app, self.trigger(*args, **kwargs))

    @overload
    async def trigger_and_wait(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, idempotency_key: str, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, priority: int, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, delay: float, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, run_at: dt.datetime, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, ttl: float, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, concurrency_key: str, **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(
        self, *args: Any, debounce: tuple[str, float], **kwargs: Any
    ) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, tags: Sequence[str], **kwargs: Any) -> R: ...
    @overload
    async def trigger_and_wait(self, *args: Any, pin_version: str, **kwargs: Any) -> R: ...

    async def trigger_and_wait(self, *args: Any, **kwargs: Any) -> R:
        """Inside a task: start a child run and wait for its result. The parent is suspended
        while it waits (it holds no worker slot), and both the trigger and the result are
        journaled. Raises ChildFailed if the child failed, was cancelled or expired."""
        options = RunOptions.pop(kwargs)
        start, wait = self._two_positions("trigger_and_wait")
        (handle,), made_now = await self._start([(args, kwargs)], options, awaited=True, seq=start)
        (outcome,) = await self._wait_for([handle.id], wait, made_now=made_now)
        if isinstance(outcome, ChildFailed):
            raise outcome
        result: R = outcome
        return result

    async def batch_trigger(self, items: Sequence[Any], **options: Any) -> list[RunHandle[R]]:
        """Start one run per item (a tuple of positional arguments, or a dict of keyword
        arguments) in one write; `options` (see RunOptions) apply to each. Inside a task the
        batch is journaled as one entry."""
        run_options = RunOptions.pop(options)
        if options:
            raise InvalidArguments(f"unknown batch options: {', '.join(sorted(options))}")
        handles, _ = await self._start(_calls(items), run_options, awaited=False)
        return handles

    async def batch_trigger_and_wait(
        self, items: Sequence[Any], **options: Any
    ) -> list[R | ChildFailed]:
        """Inside a task: start one child run per item (a tuple of positional arguments, or a
        dict of keyword arguments) and wait for all of them. Results come in input order; a
        child that did not complete has a ChildFailed in its place, the others are kept. The
        parent is suspended (no worker slot) until the last child ends."""
        run_options = RunOptions.pop(options)
        if options:
            raise InvalidArguments(f"unknown batch options: {', '.join(sorted(options))}")
        start, wait = self._two_positions("batch_trigger_and_wait")
        handles, made_now = await self._start(_calls(items), run_options, awaited=True, seq=start)
        return await self._wait_for([h.id for h in handles], wait, made_now=made_now)

    def _two_positions(self, what: str) -> tuple[int, int]:
        """The journal positions of a trigger and its wait, both taken at call time (before
        any await), so that calls gathered concurrently number the same way on every replay."""
        ctx = self._in_task_body(what)
        ctx.check_active()
        return ctx.journal.next_seq(), ctx.journal.next_seq()

    def _in_task_body(self, what: str) -> RunContext:
        ctx = current()
        if ctx is None or in_step():
            raise PerdureError(
                f"{self.name}.{what}() waits durably, so it belongs in a task body (not in a "
                "step, not outside a run); outside a task, trigger() and await handle.result()"
            )
        return ctx

    async def _start(
        self,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        options: RunOptions,
        *,
        awaited: bool,
        single: bool = False,
        seq: int | None = None,
    ) -> tuple[list[RunHandle[R]], bool]:
        """The handles of the runs started, and whether this call made every one of them
        (inside a task: none replayed from the journal, none an existing run found by its key)."""
        values = [self.encode_args(args, kwargs) for args, kwargs in calls]
        since = self.app.store.change_token()
        ctx = current()
        if ctx is None or in_step():
            await self.app.store.open()  # (once) the store's clock is read when it opens
            news = [
                options.new_run(self, v, idempotency_key=_item_key(options, single, index))
                for index, v in enumerate(values)
            ]
            created = await self.app.store.create_runs(news)
            handles: list[RunHandle[R]] = [
                RunHandle(self.app, run_id, self.result_type, since=since if new else None)
                for run_id, new in created
            ]
            return handles, all(new for _run_id, new in created)
        # inside a task: journaled, so a replay returns the same runs instead of new ones
        ctx.check_active()
        journal = ctx.journal
        if seq is None:
            seq = journal.next_seq()
        kind = EntryKind.TRIGGER if single and not awaited else EntryKind.CHILDREN
        entry = journal.recorded(seq, kind, self.name)
        made_now = entry is None
        if entry is not None:
            if kind is EntryKind.TRIGGER:
                ids = [journal.decode(entry, str)]
            else:
                ids = journal.decode(entry, tuple[list[str], bool])[0]
        else:
            news = []
            for index, value in enumerate(values):
                key = _item_key(options, single, index)
                if awaited and key is not None:
                    # scoped to this parent: an awaited run must be this run's own child
                    key = f"perdure:{ctx.run.id}:{key}"
                elif key is None and options.debounce is None:
                    # a crash before the entry is written: the same runs again
                    key = f"perdure:{ctx.run.id}:{seq}" + ("" if single else f":{index}")
                news.append(
                    options.new_run(
                        self, value, idempotency_key=key, parent_id=ctx.run.id, awaited=awaited
                    )
                )
            created = await self.app.store.create_runs(news)
            ids = [run_id for run_id, _new in created]
            made_now = all(new for _run_id, new in created)
            recorded: Any = ids[0] if kind is EntryKind.TRIGGER else (ids, awaited)
            new_entry, _data = journal.entry(seq, kind, self.name, recorded, ctx.store.now())
            journal.record(new_entry)
        if awaited:
            journal.awaited_children += len(ids)
        return [RunHandle(self.app, run_id, self.result_type) for run_id in ids], made_now

    def encode_args(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Value:
        """The arguments of a run, encoded; InvalidArguments when they do not fit the task
        (refused here, not on a worker)."""
        return self.definition.encode_call(args, kwargs)

    async def _wait_for(self, ids: list[str], seq: int, *, made_now: bool) -> list[Any]:
        """The outcomes of awaited children, once all have ended (else the run suspends).
        Children this very call made (`made_now`) are not read: they were created a moment
        ago, so the run suspends at once; if some ended meanwhile the store counted it, and a
        parent whose awaited children have all ended is claimable at once."""
        ctx = self._in_task_body("wait")
        ctx.check_active()
        journal = ctx.journal
        entry = journal.recorded(seq, EntryKind.CHILD_RESULTS, self.name)
        if entry is not None:
            outcomes = journal.decode(entry, list[ChildOutcome])
        elif made_now and ids:
            raise Suspend(None, children=journal.awaited_children)
        else:
            runs = await self.app.store.get_runs(ids) if ids else []
            if not all(run.status.terminal for run in runs):
                raise Suspend(None, children=journal.awaited_children)
            outcomes = [_outcome(run) for run in runs]
            new_entry, _data = journal.entry(
                seq, EntryKind.CHILD_RESULTS, self.name, outcomes, ctx.store.now()
            )
            journal.record(new_entry)
        return [self._result_of(run_id, o) for run_id, o in zip(ids, outcomes, strict=True)]

    def _result_of(self, run_id: str, outcome: ChildOutcome) -> Any:
        if outcome.status == RunStatus.COMPLETED:
            assert outcome.codec is not None
            assert outcome.data is not None
            return serde.decode(
                outcome.data,
                codec=serde.Codec(outcome.codec),
                type_=self.result_type,
                what=f"result of child run {run_id}",
            )
        error = outcome.error
        what = {"failed": "failed", "cancelled": "was cancelled", "expired": "expired"}
        return ChildFailed(
            f"child run {run_id} of task {self.name!r} {what.get(outcome.status, outcome.status)}"
            + (f": {error.type.rsplit('.', 1)[-1]}: {error.message}" if error else ""),
            run_id=run_id,
            status=outcome.status,
            error_type=error.type if error else "",
            error_message=error.message if error else "",
            traceback=error.traceback if error else "",
        )


def _item_key(options: RunOptions, single: bool, index: int) -> str | None:
    """The idempotency key of one run of a trigger: a batch's runs get one each."""
    key = options.idempotency_key
    return key if key is None or single else f"{key}:{index}"


def _outcome(run: RunRecord) -> ChildOutcome:
    if run.status is RunStatus.COMPLETED and run.result is not None:
        return ChildOutcome(status=str(run.status), codec=run.result.codec, data=run.result.data)
    return ChildOutcome(status=str(run.status), error=run.error)


def _calls(items: Sequence[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for item in items:
        if isinstance(item, dict):
            calls.append(((), dict(item)))
        elif isinstance(item, tuple | list):
            calls.append((tuple(item), {}))
        else:
            raise InvalidArguments(
                "each batch item is a tuple of positional arguments or a dict of keyword "
                f"arguments; got {type(item).__name__} (for one argument, write (value,))"
            )
    return calls
