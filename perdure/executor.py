"""Executing a claimed run: load its journal, call the task function from the top (steps replay
what is recorded), and end the worker's hold with one transition: completed, failed, retried
from the last checkpoint, suspended, cancelled or released."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from perdure import hooks, metrics, run_logs, serde, tracing, values
from perdure.calls import call_body
from perdure.config import WorkerConfig
from perdure.context import RunContext, _current, activate
from perdure.errors import (
    CancelSignal,
    ContinueAsNew,
    CorruptJournal,
    HistoryEnd,
    LeaseLost,
    NonDeterminismError,
    PerdureError,
    RunCancelled,
    StoreRefused,
    Suspend,
)
from perdure.hooks import Hooks, Lifecycle
from perdure.ids import new_id
from perdure.journal import Journal, error_info
from perdure.middleware import Call, Middleware, around
from perdure.records import (
    Attempt,
    History,
    JournalEntry,
    NewRun,
    ReplayVerdict,
    RunRecord,
    RunStatus,
    Transition,
    Value,
)
from perdure.store.base import Store
from perdure.taskdef import TaskDef, task_return_type
from perdure.values import RecentResults
from perdure.worker import RunControl

log = logging.getLogger("perdure.run")
_AFTER = {
    RunStatus.COMPLETED: "success",
    RunStatus.FAILED: "failure",
    RunStatus.CANCELLED: "cancel",
    RunStatus.WAITING: "wait",
}
"""The lifecycle event of a run's transition, for those that have one."""
_CHECK_WORKER = "perdure-replay-check"
"""The worker id of a replay check: no worker has it, so no write of a check is accepted."""


class Executor:
    """The worker's `execute` callback for one app's tasks."""

    def __init__(
        self,
        store: Store,
        tasks: Mapping[str, TaskDef],
        config: WorkerConfig,
        *,
        results: RecentResults | None = None,
        middleware: Sequence[Middleware] = (),
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.config = config
        run_logs.install()  # records logged inside runs are kept with them
        self.results = results if results is not None else RecentResults()
        self.middleware = tuple(middleware)
        """What wraps each execution of a run and each step attempt (perdure.middleware)."""
        self.hooks = hooks or Hooks()
        """The App's lifecycle hooks (each task's run after them)."""

    def __call__(self, run: RunRecord, control: RunControl) -> Awaitable[None]:
        if not tracing.enabled():
            return self._execute(run, control, None)
        return self._traced(run, control)

    async def _traced(self, run: RunRecord, control: RunControl) -> None:
        """Execute the run inside its execution's span."""
        requeued = run.note if run.note and run.note.startswith("requeued:") else None
        with tracing.execution(
            run.id,
            run.task,
            trace_context=run.trace_context,
            attempt=run.attempt,
            execution=run.lease,
            worker=control.worker_id,
            resumed_after=requeued,
        ) as span:
            await self._execute(run, control, span)

    async def _execute(self, run: RunRecord, control: RunControl, span: Any) -> None:
        """Execute the run; `span`: its execution's trace span, None when not traced."""
        task = self.tasks[run.task]
        started = self.store.now()
        try:
            ctx = await self._context(run, control, task, span)
        except CorruptJournal as exc:
            log.error(
                "run %s cannot be resumed: %s",
                run.id,
                exc,
                extra={"run_id": run.id, "task": run.task, "action": "corrupt_journal"},
            )
            failed = error_info(exc)
            await self.store.finish_attempt(
                run.id,
                run.held,
                Transition(
                    status=RunStatus.FAILED,
                    error=failed,
                    attempt=Attempt(
                        run_id=run.id,
                        run_attempt=run.attempt,
                        seq=0,
                        attempt=run.attempt,
                        started_at=started,
                        finished_at=self.store.now(),
                        error=failed,
                    ),
                ),
                entries=[],
                attempts=[],
            )
            return
        hooked = hooks.of(self.hooks, task.hooks)
        if hooked:
            told = self._told(task, ctx)
            for event, key in (("start", 0), ("resume", run.lease)):
                due = (event == "start" or run.lease > 1) and bool(hooked.get(event))
                if due and await hooks.mark(self.store, ctx.run, event, key):
                    await hooks.fire(hooked[event], told, event, None)
        transition = await self._run(task, ctx, started)
        if transition is None:
            return
        await ctx.flush_data()  # its metadata is written before its end
        after = _AFTER.get(transition.status)  # its hooks: recorded while it holds the run
        key = ctx.journal.seq if after == "wait" else 0
        if (
            after is None
            or not hooked.get(after)
            or not await hooks.mark(self.store, ctx.run, after, key)
        ):
            after = None
        entries, attempts = ctx.journal.take_pending()
        try:
            if ctx.journal.flushing is not None:
                try:
                    await ctx.journal.flushing  # in order after the last flush, and its outcome
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # the journal is not what the task saw (it may have swallowed the error)
                    transition, entries, attempts = self._failure(task, ctx, started, exc), [], []
            transition = await self._finish(task, ctx, started, transition, entries, attempts)
        except LeaseLost:
            log.warning(
                "run %s was taken over by another worker; this worker's outcome is dropped",
                run.id,
                extra={"run_id": run.id, "task": run.task, "action": "lease_lost"},
            )
            metrics.lease_lost()
            metrics.execution_ended(run.task, "lost")
            tracing.ended(span, "lost")
            return
        if after is not None and _AFTER.get(transition.status) == after:
            await hooks.fire(hooked[after], self._told(task, ctx), after, transition)
        tracing.ended(
            span,
            str(transition.status),
            error=transition.error.message if transition.error is not None else None,
            waiting_for=transition.waiting_for,
        )
        ended = transition.status.terminal
        metrics.execution_ended(
            run.task,
            str(transition.status),
            self.store.now() - (run.started_at or started) if ended else None,
        )
        log.info(
            "run %s of %s: %s",
            run.id,
            run.task,
            transition.status,
            extra={"run_id": run.id, "task": run.task, "action": f"run_{transition.status}"},
        )

    async def _finish(
        self,
        task: TaskDef,
        ctx: RunContext,
        started: float,
        transition: Transition,
        entries: list[JournalEntry],
        attempts: list[Attempt],
    ) -> Transition:
        """Write the run's end with its pending records; returns the transition written."""
        run = ctx.run
        while True:
            if run.parent_id is not None and transition.status.terminal:
                transition = replace(transition, wakes=True)  # its parent may wait
            try:
                await self.store.finish_attempt(
                    run.id, run.held, transition, entries=entries, attempts=attempts
                )
                if transition.result is not None and transition.status is RunStatus.COMPLETED:
                    # committed: a handle in this process woken by it finds it without a read
                    self.results.add(run.id, transition.result)
                return transition
            except RunCancelled:
                # asked to cancel while it finished: a finish never overwrites a cancel
                transition = Transition(
                    status=RunStatus.CANCELLED, attempt=self._attempt(ctx, started)
                )
            except (CorruptJournal, StoreRefused) as exc:
                # pending entries collide with recorded ones, or the database refused what was
                # to be written: the attempt fails (retrying the write as it is cannot help)
                transition, entries, attempts = self._failure(task, ctx, started, exc), [], []

    def _told(self, task: TaskDef, ctx: RunContext) -> hooks.Tell:
        """What the run's hooks are told of an event (and of the transition it came with)."""

        def tell(event: str, transition: Transition | None) -> Lifecycle:
            result = None
            if transition is not None and transition.result is not None:
                result = serde.decode(
                    transition.result.data,
                    codec=serde.Codec(transition.result.codec),
                    type_=task_return_type(task.fn),
                    what=f"result of run {ctx.run.id}",
                )
            return Lifecycle(
                event=event,
                run_id=ctx.run.id,
                task=ctx.run.task,
                attempt=ctx.run.attempt,
                result=result,
                error=transition.error if transition is not None else None,
                waiting_for=transition.waiting_for if transition is not None else None,
            )

        return tell

    async def check_replay(self, run: RunRecord, history: History) -> ReplayVerdict:
        """Replay the run's recorded journal against this executor's code without running a
        step or writing anything: whether the code calls, position by position, what the
        journal recorded (as far as the journal goes)."""
        task = self.tasks.get(run.task)
        if task is None:
            return ReplayVerdict(
                run_id=run.id,
                task=run.task,
                ok=False,
                message=f"task {run.task!r} is not in this code",
            )
        # a lease no worker holds: should the body reach the store, the write is refused
        fenced = msgspec.structs.replace(run, worker_id=_CHECK_WORKER)
        control = RunControl(worker_id=_CHECK_WORKER, history=history)
        ctx = await self._context(fenced, control, task, None, check_only=True)
        journal = ctx.journal
        token = activate(ctx)
        verdict = functools.partial(ReplayVerdict, run_id=run.id, task=run.task)
        try:
            assert run.args is not None
            args, kwargs = task.decode_args(run.id, run.args)
            await self._call(task, control, args, kwargs)
        except NonDeterminismError as exc:
            return verdict(
                ok=False,
                seq=exc.seq,
                called=exc.called,
                recorded=exc.recorded,
                message=str(exc),
                replayed=len(journal.replayed),
            )
        except (HistoryEnd, Suspend):
            return verdict(ok=True, replayed=len(journal.replayed))  # the rest is a worker's
        except Exception as exc:
            if run.error is not None:  # (a run that failed so fails again on replay)
                return verdict(ok=True, replayed=len(journal.replayed))
            return verdict(
                ok=False,
                message=f"run {run.id}: the code raised {type(exc).__name__}: {exc}",
                replayed=len(journal.replayed),
            )
        finally:
            ctx.closed = True
            _current.reset(token)
        skipped = sorted(set(journal.entries) - journal.replayed)
        if skipped:  # the body returned before calls the journal recorded
            entry = journal.entries[skipped[0]]
            return verdict(
                ok=False,
                seq=entry.seq,
                recorded=f"{entry.kind} {entry.name}",
                message=(
                    f"run {run.id}: the journal recorded {entry.kind} {entry.name!r} at position "
                    f"{entry.seq}, which the code no longer calls"
                ),
                replayed=len(journal.replayed),
            )
        return verdict(ok=True, replayed=len(journal.replayed))

    async def _context(
        self,
        run: RunRecord,
        control: RunControl,
        task: TaskDef,
        span: Any,
        *,
        check_only: bool = False,
    ) -> RunContext:
        history = control.history
        control.history = None  # not kept while the run executes
        if history is None and run.has_history:
            history = History(
                await self.store.load_journal(run.id), await self.store.load_attempts(run.id)
            )
        if history is None or not history.journal:
            log.info(
                "run %s of %s started (attempt %d)",
                run.id,
                run.task,
                run.attempt,
                extra={"run_id": run.id, "task": run.task, "action": "run_start"},
            )
        return RunContext(
            run=run,
            task=task.options,
            store=self.store,
            control=control,
            config=self.config,
            loop=asyncio.get_running_loop(),
            span=span,
            middleware=self.middleware,
            journal=Journal(
                self.store,
                run,
                task=task.options.name,
                codec=task.options.codec,
                max_value_size=task.options.max_value_size,
                max_steps=task.options.max_steps,
                history=history,
                check_only=check_only,
            ),
        )

    async def _run(self, task: TaskDef, ctx: RunContext, started: float) -> Transition | None:
        run = ctx.run
        token = activate(ctx)
        try:
            # cancelled while its history was read or its start hooks ran: its task was not
            # (a task cancelled there ends without writing the cancel), so it stops here
            ctx.check_active()
            ctx.control.interruptible = True
            assert run.args is not None
            args, kwargs = task.decode_args(run.id, run.args)
            if self.middleware:
                call = Call(kind="run", run_id=run.id, task=run.task, attempt=run.attempt)
                result = await around(
                    self.middleware, call, lambda: self._call(task, ctx.control, args, kwargs)
                )
            else:
                result = await self._call(task, ctx.control, args, kwargs)
            data = values.encode(
                result,
                codec=task.options.codec,
                what=f"result of task {task.options.name!r}",
                max_size=task.options.max_value_size,
            )
        except ContinueAsNew as follow:
            try:
                args_value = task.encode_call(follow.args_, follow.kwargs)
            except Exception as exc:  # (arguments that do not fit, or cannot be stored)
                return self._failure(task, ctx, started, exc)
            return Transition(
                status=RunStatus.COMPLETED,
                attempt=self._attempt(ctx, started),
                continue_as=NewRun(
                    id=new_id(),
                    app=run.app,
                    task=run.task,
                    queue=run.queue,
                    args=args_value,
                    available_at=self.store.now(),
                    priority=run.priority,
                    concurrency_key=run.concurrency_key,
                    tags=list(run.tags),
                ),
            )
        except Suspend as suspend:
            kind = suspend.waiting_for or ("children" if suspend.children else "sleep")
            metrics.wait_registered(kind.split(":", 1)[0])
            return Transition(
                status=RunStatus.WAITING,
                available_at=suspend.wake_at,
                children_target=suspend.children,
                waiting_for=suspend.waiting_for,
                signals=run.signals if suspend.signalled else None,
            )
        except (CancelSignal, asyncio.CancelledError) as exc:
            reason = ctx.control.stop_reason
            if reason == "cancel":
                return Transition(status=RunStatus.CANCELLED, attempt=self._attempt(ctx, started))
            if reason == "release":
                return Transition(status=RunStatus.QUEUED, available_at=self.store.now())
            if reason is None:
                current = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and not (
                    current is not None and current.cancelling()
                ):
                    # user code raised CancelledError itself (nobody cancelled this run): a
                    # failure like any other, not a stop that would leave the run running
                    return self._failure(task, ctx, started, exc)
                raise
            return None  # lease lost: another worker owns the run now
        except LeaseLost:
            log.warning(
                "run %s was taken over by another worker; stopping here",
                run.id,
                extra={"run_id": run.id, "task": run.task, "action": "lease_lost"},
            )
            return None
        except Exception as exc:
            return self._failure(task, ctx, started, exc)
        finally:
            ctx.control.interruptible = False  # its end is written whatever comes meanwhile
            ctx.closed = True
            _current.reset(token)
        return Transition(
            status=RunStatus.COMPLETED,
            result=Value(codec=str(task.options.codec), data=data, raw_size=len(data)),
            attempt=self._attempt(ctx, started),
        )

    async def _call(
        self, task: TaskDef, control: RunControl, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        return await call_body(
            task.fn,
            args,
            kwargs,
            is_async=task.is_async,
            what=f"task {task.options.name!r}",
            timeout=task.options.timeout,
            threads=control.threads,
        )

    def _attempt(
        self, ctx: RunContext, started: float, exc: BaseException | None = None
    ) -> Attempt:
        return Attempt(
            run_id=ctx.run.id,
            run_attempt=ctx.run.attempt,
            seq=0,
            attempt=ctx.run.attempt,
            started_at=started,
            finished_at=self.store.now(),
            error=None if exc is None else error_info(exc, policy=ctx.task.retry),
        )

    def _failure(
        self, task: TaskDef, ctx: RunContext, started: float, exc: BaseException
    ) -> Transition:
        run = ctx.run
        attempt = self._attempt(ctx, started, exc)
        assert attempt.error is not None
        policy = task.options.retry
        if attempt.error.retryable and run.attempt < policy.max_attempts:
            delay = policy.delay(run.attempt, error=exc)
            log.warning(
                "run %s attempt %d failed (%s: %s); retrying from its last checkpoint in %.2fs",
                run.id,
                run.attempt,
                type(exc).__name__,
                exc,
                delay,
                extra={"run_id": run.id, "task": run.task, "action": "run_retry"},
            )
            return Transition(
                status=RunStatus.QUEUED,
                available_at=self.store.now() + delay,
                error=attempt.error,
                next_attempt=True,
                attempt=attempt,
            )
        level = logging.ERROR if not isinstance(exc, PerdureError) else logging.WARNING
        log.log(
            level,
            "run %s failed after %d attempt(s): %s: %s",
            run.id,
            run.attempt,
            type(exc).__name__,
            exc,
            extra={"run_id": run.id, "task": run.task, "action": "run_failed"},
        )
        return Transition(status=RunStatus.FAILED, error=attempt.error, attempt=attempt)
