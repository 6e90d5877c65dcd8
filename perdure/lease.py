"""Leases: a worker's identity, its heartbeat thread, and the reaping of dead or stalled workers.

A run's lease is held through its worker: the worker heartbeats once per interval (one write,
however many runs it holds). Any worker takes over the runs of a worker that is
- provably dead: same host (and boot, and PID namespace), and its PID is gone or now belongs to
  a process with another start time (checked every `reap_interval`, so within a second), or
- stalled: no heartbeat for `missed_heartbeats` intervals, or
- gone from Redis (with the Redis tier): its presence key expired, `presence_ttl` after its last
  beat, whatever its host's TCP connections still look like.
The heartbeat runs in its own thread with its own event loop, so a blocked worker loop cannot
keep beating while a crashed thread cannot fake one. With the Redis tier up, the checks that ask
PostgreSQL run every few seconds instead of every `reap_interval` (presence finds the dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from perdure import metrics
from perdure.config import WorkerConfig
from perdure.errors import LeaseLost
from perdure.records import WorkerRecord
from perdure.store.base import Store
from perdure.store.redis_tier import Beat, RedisTier

log = logging.getLogger("perdure.lease")

_TICK = 1.0
"""Seconds between the worker loop's liveness ticks (see LeaseKeeper)."""
_STORE_CHECK_EVERY = 5.0
"""With presence in Redis: seconds between the reaper's checks that ask the store."""


def process_start_time(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot; None if it does not exist.

    Returns 0 where /proc is not available (the PID fast path is then off).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def is_process_alive(pid: int, started: int) -> bool:
    """True unless we can prove that the process `pid` started at `started` is gone."""
    if not os.path.exists("/proc/self/stat") or started == 0:
        return True
    current = process_start_time(pid)
    if current is None:
        return False
    if current == 0:
        return True
    if current != started:
        return False  # the PID was reused by another process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")  # a zombie has finished running


def host_key() -> str:
    """What makes PIDs comparable: the host name, its boot, and the PID namespace."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "|".join(parts)


def new_worker_record(
    worker_id: str, app: str, tasks: list[str], now: float, version: str | None = None
) -> WorkerRecord:
    """This process as a worker of `version` of the app's code, registering at `now` (the
    store's clock)."""
    pid = os.getpid()
    return WorkerRecord(
        id=worker_id,
        app=app,
        host=socket.gethostname(),
        host_key=host_key(),
        pid=pid,
        pid_started=process_start_time(pid) or 0,
        started_at=now,
        heartbeat_at=now,
        tasks=tasks,
        version=version,
    )


class Liveness:
    """How long this worker may act for its runs without asking the store: no other worker
    declares it dead before its last confirmation's time plus the stall time (with presence in
    Redis: plus its presence TTL). Past half of that (the process was stopped, its loop starved,
    the store unreachable) it must confirm before it starts anything for a run."""

    def __init__(self, stalled_after: float, presence_ttl: float | None = None) -> None:
        self._stalled_after = stalled_after
        self._presence_ttl = presence_ttl
        self.presence_up = presence_ttl is not None
        """False while Redis does not answer this worker: its heartbeats vouch for it."""
        self._confirmed = time.monotonic()

    def confirmed(self, sent: float) -> None:
        """A heartbeat or presence beat (or the registration) sent at `sent` (time.monotonic())
        succeeded."""
        self._confirmed = max(self._confirmed, sent)

    def fresh(self) -> bool:
        """True while the last confirmation is recent enough to act on."""
        window = self._stalled_after
        if self._presence_ttl is not None and self.presence_up:
            window = self._presence_ttl
        return time.monotonic() - self._confirmed < window / 2


async def confirm(
    store: Store, presence: RedisTier | None, app: str, worker_id: str, config: WorkerConfig
) -> bool:
    """Vouch for the worker `worker_id` of `app` now: renew its presence in Redis (when its
    key is missing, Redis lost it or it expired: the store says whether the worker is still
    alive, then it enters again), or without Redis heartbeat; False if it was declared dead.
    Raises presence.errors while Redis does not answer (then heartbeat instead)."""
    if presence is None:
        return await store.heartbeat(worker_id)
    found = await presence.beat(app, worker_id, config.presence_ttl)
    if found is Beat.MISSING:
        if not await store.heartbeat(worker_id):
            return False
        found = await presence.enter(app, worker_id, config.presence_ttl)
    return found is Beat.ALIVE


async def vouch(
    store: Store,
    presence: RedisTier | None,
    liveness: Liveness,
    app: str,
    worker_id: str,
    config: WorkerConfig,
) -> bool:
    """Confirm now that the worker `worker_id` of `app` still holds its runs (see confirm:
    through its presence while Redis answers, else a heartbeat); False if it was declared
    dead."""
    sent = time.monotonic()
    current = presence if liveness.presence_up else None
    try:
        alive = await confirm(store, current, app, worker_id, config)
    except Exception as exc:
        if current is None or not isinstance(exc, current.errors):
            raise
        liveness.presence_up = False  # (the tier logs it) heartbeats vouch from now on
        alive = await store.heartbeat(worker_id)
    if alive:
        liveness.confirmed(sent)
    return alive


async def tick(stamp: list[float]) -> None:
    """Run on the worker's loop: prove every second that the loop still runs."""
    while True:
        stamp[0] = time.monotonic()
        await asyncio.sleep(_TICK)


async def reap_dead_workers(
    store: Store,
    me: WorkerRecord,
    config: WorkerConfig,
    presence: RedisTier | None = None,
    *,
    ask_store: bool = True,
) -> int:
    """Requeue the runs of workers that are provably dead, stalled, or (with `presence`) gone
    from Redis; returns runs requeued. The checks that read the store run when `ask_store`.
    LeaseLost if `me` itself is no longer alive (another worker declared it dead)."""
    dead: dict[str, str] = {}
    if presence is not None:
        with contextlib.suppress(*presence.errors):  # (logged by the tier: store checks then)
            for worker_id in await presence.absent(me.app, me=me.id):
                if await presence.bury(me.app, worker_id):
                    dead[worker_id] = f"gone (no presence in Redis for {config.presence_ttl:.1f}s)"
    if ask_store:
        await _dead_by_store(store, me, config, dead)
    requeued = 0
    for worker_id, reason in dead.items():
        count = await store.reap_workers([worker_id], reason=reason)
        requeued += count
        metrics.takeovers(count)
        log.warning(
            "worker %s %s; requeued %d run(s)",
            worker_id,
            reason,
            count,
            extra={"action": "reap", "worker": worker_id},
        )
        if presence is not None:
            with contextlib.suppress(*presence.errors):
                await presence.forget(me.app, worker_id)
    return requeued


async def _dead_by_store(
    store: Store, me: WorkerRecord, config: WorkerConfig, dead: dict[str, str]
) -> None:
    """Add to `dead` the workers the store's records prove dead or stalled."""
    now = store.now()  # the clock the heartbeats were written on
    live = await store.live_workers(app=me.app)
    if all(w.id != me.id for w in live):
        raise LeaseLost(f"worker {me.id} was declared dead by another worker")
    others = [w for w in live if w.id != me.id and w.id not in dead]
    if others and config.session_check and store.session_liveness:
        for worker_id in await store.dead_sessions([w.id for w in others], me=me.id):
            dead[worker_id] = "died (its database session is gone)"
    for worker in others:
        if worker.id in dead:
            continue
        if (
            config.pid_check
            and worker.host_key == me.host_key
            and not is_process_alive(worker.pid, worker.pid_started)
        ):
            dead[worker.id] = f"died (process {worker.pid} on {worker.host} is gone)"
        elif now - worker.heartbeat_at > config.stalled_after:
            dead[worker.id] = f"stalled (no heartbeat for {now - worker.heartbeat_at:.1f}s)"


class LeaseKeeper:
    """The heartbeat thread: beats every `heartbeat_interval`, reaps every `reap_interval`;
    with `presence`, also beats in Redis every quarter of `presence_ttl`.

    It beats only while the worker's event loop ticks (`loop_age()` is the seconds since the
    last tick): a worker whose loop is blocked for longer than a heartbeat interval stops
    heartbeating, and its runs are taken over once its lease expires.
    """

    def __init__(
        self,
        store: Store,
        me: WorkerRecord,
        config: WorkerConfig,
        *,
        on_lost: Callable[[], object],
        loop_age: Callable[[], float],
        liveness: Liveness,
        presence: RedisTier | None = None,
    ) -> None:
        self._store = store
        self._me = me
        self._config = config
        self._on_lost = on_lost
        self._loop_age = loop_age
        self._liveness = liveness
        self._presence = presence
        self._presence_since: float | None = None
        """Since when (time.monotonic()) Redis has answered this thread without a break."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"perdure-heartbeat-{me.id[-6:]}", daemon=True
        )

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            await self._store.detach()  # this thread's loop ends here
            if self._presence is not None:
                await self._presence.detach()

    async def _loop(self) -> None:
        config, presence = self._config, self._presence
        now = time.monotonic()
        next_beat = now + config.heartbeat_interval
        next_presence = now
        next_store_check = now
        while not self._stop.is_set():
            due = min(next_beat, next_presence if presence is not None else next_beat)
            self._stop.wait(min(config.reap_interval, max(0.0, due - time.monotonic())))
            if self._stop.is_set():
                return
            try:
                stuck = self._loop_age()
                blocked = stuck > config.heartbeat_interval + _TICK
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + config.heartbeat_interval
                    if blocked:
                        # the worker's event loop is blocked (a sync call in async code, a
                        # debugger): stop vouching for its runs, so their leases expire
                        log.warning(
                            "worker %s: event loop unresponsive for %.0fs; not heartbeating",
                            self._me.id,
                            stuck,
                            extra={"action": "loop_blocked"},
                        )
                    else:
                        await self._beat(now)
                if presence is not None and now >= next_presence:
                    next_presence = now + config.presence_ttl / 4
                    if not blocked:
                        await self._beat_presence(presence, now)
                if blocked:
                    continue  # a worker that cannot vouch for itself judges no one
                # presence proves a death only once every live worker had the time to beat
                # since Redis answers again (after an outage every key has expired)
                since = self._presence_since
                steady = since is not None and now - since >= 1.5 * config.presence_ttl
                ask_store = not steady or now >= next_store_check
                if ask_store:
                    next_store_check = now + _STORE_CHECK_EVERY
                await reap_dead_workers(
                    self._store,
                    self._me,
                    config,
                    presence if steady else None,
                    ask_store=ask_store,
                )
            except LeaseLost:
                self._on_lost()  # (the worker says so)
                return
            except Exception:
                log.exception("heartbeat failed; retrying", extra={"action": "heartbeat"})

    async def _beat(self, sent: float) -> None:
        if not await self._store.heartbeat(self._me.id):
            raise LeaseLost(f"worker {self._me.id} was declared dead")
        self._liveness.confirmed(sent)

    async def _beat_presence(self, presence: RedisTier, sent: float) -> None:
        try:
            me = self._me
            alive = await confirm(self._store, presence, me.app, me.id, self._config)
        except presence.errors:
            self._liveness.presence_up = False  # (the tier logs it) heartbeats vouch now
            self._presence_since = None
            return
        if not alive:
            raise LeaseLost(f"worker {self._me.id} was declared dead")
        self._liveness.presence_up = True
        if self._presence_since is None:
            self._presence_since = sent
        self._liveness.confirmed(sent)
