"""The worker: claims runs into `concurrency` slots, keeps their leases, stops them on cancel
requests, and drains on SIGTERM/SIGINT (finish within `drain_timeout`, else release).

It knows nothing of task functions: the runtime hands it an `execute(run, control)` coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from perdure import cron, metrics
from perdure.config import WorkerConfig
from perdure.errors import CancelSignal, LeaseLost, StoreError
from perdure.ids import new_id
from perdure.lease import (
    LeaseKeeper,
    Liveness,
    new_worker_record,
    reap_dead_workers,
    tick,
    vouch,
)
from perdure.records import (
    History,
    NewSchedule,
    QueueConfig,
    RunRecord,
    RunStatus,
    Transition,
    WorkerRecord,
)
from perdure.store.base import ChangeToken, Store
from perdure.store.notify import CANCEL, CLAIMABLE
from perdure.store.redis_tier import RedisTier

log = logging.getLogger("perdure.worker")

_IDLE_WAIT = 1.0
_CANCEL_CHECK_EVERY = 1.0  # besides every announced cancel: a safety net for a lost one
_HOUSEKEEPING_EVERY = 5.0
_SCHEDULE_LOOK_EVERY = 1.0  # seconds between looks for due schedules (sooner for a tick)
_RELEASE_DELAY = 5.0
_WAKE_TOPICS = (CLAIMABLE, CANCEL)
_BLOCKED_POLL = 0.05  # runs held back by a limit: look again this often (or on any change)
_STORE_RETRY_MIN = 0.1
_STORE_RETRY_MAX = 5.0


class StepThreads:
    """The threads sync steps and sync tasks run in: a pool of the worker's own, apart from the
    event loop's default executor (which the store's blocking calls use, and which stuck user
    code must never starve). A sync call cannot be interrupted, so one that ran over its
    timeout, or whose run stopped, keeps its thread until it returns; when every thread is
    held so, the worker can run no sync code (see `exhausted`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="perdure-step")
        self._lock = threading.Lock()
        self._held = 0

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` in one of the threads."""
        return self.pool.submit(fn)

    def abandon(self, call: Future[Any]) -> None:
        """Nobody waits for `call` any more; it holds its thread until it returns."""
        with self._lock:
            self._held += 1
        call.add_done_callback(self._returned)  # in the thread that ends it (or here)

    def _returned(self, _call: Future[Any]) -> None:
        with self._lock:
            self._held -= 1

    @property
    def held(self) -> int:
        """Threads held by calls nobody waits for."""
        return self._held

    @property
    def exhausted(self) -> bool:
        """True when every thread is held by a call nobody waits for."""
        return self._held >= self.size

    def shutdown(self) -> None:
        """Stop the idle threads; the held ones end with their calls (or the process)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class RunControl:
    """What the worker tells a run while it executes."""

    worker_id: str
    """The worker executing the run."""
    stop_reason: str | None = None
    """Set before the run's task is cancelled: "cancel" (user request) or "release" (drain)."""
    interruptible: bool = False
    """Its code runs: a cancel cancels its task (before and after, the executor checks)."""
    history: History | None = None
    """The run's journal and attempts, read with its claim (None: read them)."""
    threads: StepThreads | None = None
    """Where its sync code runs (None: the event loop's default executor)."""
    vouch: Callable[[], Awaitable[None]] | None = None
    """Awaited before a step body starts: returns once the worker is sure it still holds its
    runs, raises CancelSignal if it does not (None: no check)."""


Execute = Callable[[RunRecord, RunControl], Awaitable[None]]


class Worker:
    """One worker process's claim loop."""

    def __init__(
        self,
        store: Store,
        *,
        app: str,
        tasks: list[str],
        execute: Execute,
        config: WorkerConfig,
        queues: list[QueueConfig] | None = None,
        task_limits: dict[str, int] | None = None,
        schedules: list[NewSchedule] | None = None,
        version: str | None = None,
        presence: RedisTier | None = None,
    ) -> None:
        self.store = store
        self.presence = presence
        """The Redis tier, where this worker keeps its presence (None: its heartbeats only)."""
        self.app = app
        self.version = version
        """The version of the app's code it runs: it starts runs of no other version (None: only
        runs not pinned to one)."""
        self.tasks = sorted(tasks)
        self.queues = queues or []
        self.schedules = schedules or []
        """Schedules declared in code (their next_at is worked out when the worker starts)."""
        self._next_fire = 0.0
        """time.monotonic() at which to fire due schedules next."""
        self.task_limits = task_limits or {}
        self.execute = execute
        self.config = config
        self.id = new_id()
        self._active: dict[str, tuple[asyncio.Task[None], RunControl]] = {}
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None  # (while the claim loop waits: _wait)
        self._last_cancel_check = 0.0
        self._cancels_seen: ChangeToken = -1
        """The change token before the last read of cancel requests."""
        self._looked: tuple[ChangeToken, float | None] | None = None
        """The last look for claimable runs: the change token before it, and the earliest
        time a run may be claimed (None: no run)."""
        self._last_unknown_check = 0.0
        self._lost = threading.Event()
        self._serving = False
        self._stamp = [time.monotonic()]
        """When its event loop last ticked (time.monotonic(), written on the loop every second)."""
        self.finished = threading.Event()
        """Set when run() has returned: every run finished or released."""
        self._force = False
        self.threads = StepThreads(config.concurrency * 2 + 4)
        self.liveness = Liveness(
            config.stalled_after, config.presence_ttl if presence is not None else None
        )
        self._said_exhausted = False

    def stop(self) -> None:
        """Stop claiming and drain (call from the worker's loop; a second call releases at once)."""
        if self._stopping.is_set():
            self._force = True
        self._stopping.set()
        self._poke()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until stop() (or SIGTERM/SIGINT), then drain."""
        loop = asyncio.get_running_loop()
        installed = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        try:
            me = await self._register()
            if me is not None:
                await self._serve(loop, me)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.threads.shutdown()
            self.finished.set()
        if self._lost.is_set():
            raise LeaseLost(
                f"worker {self.id} was declared dead by another worker (stalled, or cut off from "
                "the database) and its runs were taken over; it stopped. Restart it."
            )

    async def _register(self) -> WorkerRecord | None:
        """Register with the store, waiting (with backoff) while it is unavailable; this worker
        as registered, or None if stopped first."""
        delay = _STORE_RETRY_MIN
        while not self._stopping.is_set():
            try:
                await self.store.open()  # (once) a store that is down is waited for here
                me = new_worker_record(
                    self.id, self.app, self.tasks, self.store.now(), self.version
                )
                sent = time.monotonic()
                await self.store.register_worker(me)
                self.liveness.confirmed(sent)  # (its presence: the heartbeat thread's)
                if self.queues:
                    await self.store.declare_queues(self.app, self.queues)
                await self._declare_schedules()
                await reap_dead_workers(self.store, me, self.config)
                await self._remove_partial_writes()
                return me
            except StoreError as exc:
                delay = await self._back_off(f"worker {self.id} cannot register", exc, delay)
        return None

    async def _declare_schedules(self) -> None:
        """Record the schedules this code declares (one that stays as it was keeps its next
        tick), and drop those that earlier code declared and this code no longer does."""
        now = self.store.now()
        for schedule in self.schedules:
            first = cron.next_tick(schedule.cron, schedule.tz, now)
            await self.store.put_schedule(dataclasses.replace(schedule, next_at=first))
        await self.store.prune_declared(self.app, [s.key for s in self.schedules])

    async def _fire_schedules(self) -> None:
        """Start the runs of the schedules due now (each tick once, whoever else fires), and
        plan the next look: at the next tick, or within a second (a schedule made since)."""
        _runs, next_at = await self.store.fire_schedules(app=self.app, tasks=self.tasks)
        wait = _SCHEDULE_LOOK_EVERY
        if next_at is not None:
            wait = max(0.0, min(wait, next_at - self.store.now()))
        self._next_fire = time.monotonic() + wait

    async def _remove_partial_writes(self) -> None:
        """What blob writes killed with their process (or stopped by a full disk) left."""
        try:
            removed = await self.store.blobs.remove_partial_writes()
        except Exception as exc:
            log.warning("could not look for partial blob writes: %s", exc)
            return
        if removed:
            log.info(
                "removed %d partial blob write(s) left by stopped processes",
                removed,
                extra={"action": "remove_partial"},
            )

    async def _back_off(self, what: str, exc: StoreError, delay: float) -> float:
        """Say why, wait `delay` (or until stop()), and return the next, longer delay."""
        log.warning("%s (%s); retrying in %.1fs", what, exc, delay, extra={"action": "store_retry"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return min(delay * 2, _STORE_RETRY_MAX)

    def health(self) -> tuple[bool, bool, str]:
        """(live, ready, why not) from any thread: live unless it was declared dead or its event
        loop has not run for the stall time; ready while it serves, is not stopping and its
        store answered its last heartbeats."""
        loop_age = time.monotonic() - self._stamp[0]
        if self._lost.is_set():
            return False, False, "declared dead by another worker"
        if self._serving and loop_age > self.config.stalled_after:
            return False, False, f"its event loop has not run for {loop_age:.0f}s"
        if self.finished.is_set():
            return True, False, "stopped"
        if not self._serving:
            return True, False, "not registered with the store yet"
        if self._stopping.is_set():
            return True, False, "draining"
        if not self.liveness.fresh():
            return True, False, "its store has not answered its heartbeats"
        return True, True, ""

    async def _serve(self, loop: asyncio.AbstractEventLoop, me: WorkerRecord) -> None:
        stamp = self._stamp
        stamp[0] = time.monotonic()
        ticker = asyncio.create_task(tick(stamp), name="perdure-loop-tick")
        keeper = LeaseKeeper(
            self.store,
            me,
            self.config,
            on_lost=lambda: loop.call_soon_threadsafe(self._on_lost),
            loop_age=lambda: time.monotonic() - stamp[0],
            liveness=self.liveness,
            presence=self.presence,
        )
        keeper.start()
        self._serving = True
        log.info(
            "worker %s started: app %s, %d slot(s), tasks %s",
            self.id,
            self.app,
            self.config.concurrency,
            ", ".join(self.tasks),
            extra={"action": "worker_start"},
        )
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            self._serving = False
            keeper.stop()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if not self._lost.is_set():
                with contextlib.suppress(StoreError):  # its lease expires instead
                    await self.store.deregister_worker(self.id)
                if self.presence is not None:
                    with contextlib.suppress(*self.presence.errors):  # (it expires)
                        await self.presence.leave(self.app, self.id)
            log.info("worker %s stopped", self.id, extra={"action": "worker_stop"})

    async def _vouch(self) -> None:
        """Before a step body starts: make sure this worker still holds its runs (see
        Liveness). When its last heartbeat is too old to rely on (the process was stopped, its
        loop starved), heartbeat now, waiting while the store is unreachable; stop the run if
        the worker was declared dead meanwhile (its runs are someone else's now)."""
        delay = _STORE_RETRY_MIN
        while not self.liveness.fresh():
            if self._lost.is_set():
                raise CancelSignal("lost")
            try:
                alive = await vouch(
                    self.store, self.presence, self.liveness, self.app, self.id, self.config
                )
            except StoreError as exc:
                delay = await self._back_off("cannot confirm this worker's lease", exc, delay)
                continue
            if not alive:
                self._on_lost()
                raise CancelSignal("lost")

    def _on_lost(self) -> None:
        """Another worker declared this one dead (found by the heartbeat thread or before a
        step body): its runs are someone else's now; stop them, and stop."""
        if not self._lost.is_set():
            log.error(
                "worker %s was declared dead by another worker; its runs were taken over",
                self.id,
                extra={"action": "lease_lost"},
            )
        self._lost.set()
        for task, control in self._active.values():
            control.stop_reason = "lost"
            task.cancel()
        self._stopping.set()

    async def _claim_loop(self) -> None:
        delay = _STORE_RETRY_MIN
        while not self._stopping.is_set():
            try:
                await self._iteration()
                delay = _STORE_RETRY_MIN
            except StoreError as exc:
                delay = await self._back_off("store unavailable", exc, delay)

    async def _iteration(self) -> None:
        """Claim what can be claimed, else wait until something may be."""
        token = self.store.change_token()
        self._slot_freed.clear()
        free = self.config.concurrency - len(self._active)
        if self.threads.exhausted:
            free = 0  # no thread left for sync code: claim nothing until one returns
            if not self._said_exhausted:
                self._said_exhausted = True
                log.error(
                    "all %d step threads are held by sync steps that ran over their timeouts "
                    "(a sync call cannot be interrupted); this worker claims nothing until one "
                    "returns. Restart it, and give those steps code that can end.",
                    self.threads.size,
                    extra={"action": "threads_exhausted"},
                )
        elif self._said_exhausted:
            self._said_exhausted = False
            log.info("step threads are free again; claiming", extra={"action": "threads_free"})
        if time.monotonic() >= self._next_fire:
            await self._fire_schedules()
        wake_at = None
        blocked = False
        if free > 0:
            looked = self._looked
            if looked is not None and not self.store.changed_since(looked[0], (CLAIMABLE,)):
                wake_at = looked[1]  # nothing became claimable since the last look (a slot freed)
            else:
                # a read first: claiming is a write, and most wake-ups find nothing to claim
                wake_at = await self.store.next_wake_at(
                    app=self.app, tasks=self.tasks, version=self.version
                )
                self._looked = (token, wake_at)
            if wake_at is not None and wake_at <= self.store.now():
                self._looked = None  # what the claim takes changes what is left
                began = time.perf_counter()
                claimed = await self.store.claim_runs(
                    app=self.app,
                    worker_id=self.id,
                    tasks=self.tasks,
                    limit=free,
                    task_limits=self.task_limits,
                    version=self.version,
                )
                metrics.claimed(len(claimed), time.perf_counter() - began)
                for run in claimed:
                    problem = claimed.unreadable.get(run.id)
                    if problem is None:
                        await self._start(run, claimed.histories.get(run.id))
                    else:
                        await self._give_back_unreadable(run, problem)
                if claimed:
                    if claimed.looked and len(claimed) < free:  # it took every run due
                        self._looked = (token, claimed.next_at)
                    return  # there may be more waiting
                # held back by limits: a run's end (here, or in another worker: polled) or the
                # rate window frees them
                wake_at = min(claimed.retry_at or math.inf, self.store.now() + _BLOCKED_POLL)
                blocked = True
        now = time.monotonic()
        if self._active and (
            self.store.changed_since(self._cancels_seen, (CANCEL,))
            or now - self._last_cancel_check >= _CANCEL_CHECK_EVERY
        ):
            # every cancel announced since the last read is seen (a time throttle here let a
            # wake-up by a cancel pass unread, and the run ran on until the next idle timeout)
            self._cancels_seen = token
            self._last_cancel_check = now
            await self._check_cancel_requests()
        if now - self._last_unknown_check >= _HOUSEKEEPING_EVERY:
            self._last_unknown_check = now
            await self._note_unknown_tasks()
            await self._release_strays()
            await self.store.expire_runs()
            await self.store.refresh_statistics()
        timeout = min(_IDLE_WAIT, max(0.0, self._next_fire - time.monotonic()))
        if wake_at is not None:
            timeout = max(0.005 if blocked else 0.0, min(timeout, wake_at - self.store.now()))
        if timeout > 0:
            await self._wait(token, timeout)

    async def _wait(self, token: ChangeToken, timeout: float) -> None:
        """Until a run may be claimable or cancelled, a slot frees, stop(), or `timeout`: one
        future that each of them resolves (a task per event cost ~25 us a wake-up)."""
        if self._stopping.is_set() or self._slot_freed.is_set():
            return
        self._wake = wake = asyncio.get_running_loop().create_future()
        try:
            await self.store.wait_for_change(timeout, topics=_WAKE_TOPICS, since=token, wake=wake)
        finally:
            self._wake = None

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)  # (the claim loop's _wait ends)

    async def _start(self, run: RunRecord, history: History | None = None) -> None:
        previous = self._active.get(run.id)
        if previous is not None:
            # this worker runs it already: a database crash undid the claim that execution runs
            # under, and this claim was given the same lease. Stop that execution and give the
            # run back: its next claim's lease fences out whatever the old one still writes.
            task, control = previous
            control.stop_reason = "lost"
            task.cancel()
            log.warning(
                "run %s: claimed again while this worker still ran it (its claim was lost, the "
                "database may have crashed); stopping that execution and releasing the run",
                run.id,
                extra={"run_id": run.id, "task": run.task, "action": "claim_lost"},
            )
            await self._release(run, delay=0.0)
            return
        control = RunControl(
            worker_id=self.id, history=history, threads=self.threads, vouch=self._vouch
        )
        task = asyncio.create_task(self._guarded(run, control), name=f"perdure-run-{run.id}")
        self._active[run.id] = (task, control)
        metrics.slots(len(self._active), self.config.concurrency)

    async def _guarded(self, run: RunRecord, control: RunControl) -> None:
        try:
            await self.execute(run, control)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception(
                "run %s: unexpected error in the worker; releasing the run for a later retry",
                run.id,
                extra={"run_id": run.id, "task": run.task, "action": "worker_error"},
            )
            await self._release(run, delay=_RELEASE_DELAY)
        finally:
            if self._active.get(run.id, (None,))[0] is asyncio.current_task():
                del self._active[run.id]
            self._slot_freed.set()
            self._poke()
            metrics.slots(len(self._active), self.config.concurrency)

    async def _release(self, run: RunRecord, *, delay: float, note: str | None = None) -> None:
        """Give the run back to the queue, claimable after `delay` seconds (if this fails, the
        run's lease expires instead)."""
        with contextlib.suppress(Exception):
            await self.store.finish_attempt(
                run.id,
                run.held,
                Transition(
                    status=RunStatus.QUEUED, available_at=self.store.now() + delay, note=note
                ),
                entries=[],
                attempts=[],
            )

    async def _give_back_unreadable(self, run: RunRecord, problem: Exception) -> None:
        """A run this worker cannot read (no or a wrong encryption key, a blob missing from
        its blob store): leave it, with a note, to a worker that can."""
        note = (
            f"worker {self.id} cannot read this run's arguments ({type(problem).__name__}: "
            f"{problem}); every process of an app needs the same PERDURE_ENCRYPTION_KEY and "
            "PERDURE_BLOB_URL"
        )
        log.error(
            "run %s: %s; released for another worker",
            run.id,
            note,
            extra={"run_id": run.id, "task": run.task, "action": "unreadable"},
        )
        await self._release(run, delay=_RELEASE_DELAY, note=note)

    async def _check_cancel_requests(self) -> None:
        for run_id, _lease in await self.store.cancel_requests(self.id):
            entry = self._active.get(run_id)
            if entry is not None and entry[1].stop_reason is None:
                entry[1].stop_reason = "cancel"
                if entry[1].interruptible:  # (else the executor sees it: see RunControl)
                    entry[0].cancel()

    async def _release_strays(self) -> None:
        """Requeue runs leased to this worker that it does not run: claims whose answer a
        dropped database connection lost."""
        released = await self.store.release_strays(self.id, keep=list(self._active))
        if released:
            log.warning(
                "released %d run(s) claimed for this worker but never started: %s",
                len(released),
                ", ".join(released),
                extra={"action": "release_strays"},
            )

    async def _note_unknown_tasks(self) -> None:
        note = (
            f"no worker for this task: worker {self.id} (app {self.app!r}) knows only "
            f"{', '.join(self.tasks) or 'no tasks'}; start a worker that imports it"
        )
        count = await self.store.note_unclaimable(app=self.app, tasks=self.tasks, note=note)
        if count:
            log.warning(
                "%d run(s) wait for a task this worker does not know (it knows: %s)",
                count,
                ", ".join(self.tasks),
                extra={"action": "unknown_task"},
            )

    async def _drain(self) -> None:
        if not self._active:
            return
        log.info(
            "draining %d run(s) (up to %.0fs)",
            len(self._active),
            self.config.drain_timeout,
            extra={"action": "drain"},
        )
        deadline = time.monotonic() + self.config.drain_timeout
        while self._active and time.monotonic() < deadline and not self._force:
            tasks = [task for task, _ in self._active.values()]
            await asyncio.wait(tasks, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        for task, control in list(self._active.values()):
            if control.stop_reason is None:
                control.stop_reason = "release"
            task.cancel()
        remaining = [task for task, _ in self._active.values()]
        if remaining:
            await asyncio.wait(remaining)
