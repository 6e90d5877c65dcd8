"""The App's admin API: what an operator does to runs, queues and the stored data — list, show,
cancel, purge, rotate keys, migrate. The CLI calls it; so will the server. Nothing above it
touches the store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from perdure import keys, schedules
from perdure.errors import CorruptJournal, EncryptionError, StoreRefused
from perdure.handle import RunHandle
from perdure.journal import reused_children
from perdure.progress import LOGS, decoded
from perdure.records import (
    ApiKey,
    Attempt,
    History,
    JournalEntry,
    QueueConfig,
    QueueStats,
    ReplayVerdict,
    RunRecord,
    RunStatus,
    ScheduleRecord,
    Scope,
    Value,
)
from perdure.retention import DEFAULT_GRACE, MIN_GRACE, PurgeReport, parse_age, purge
from perdure.rotation import RotationReport, rotate
from perdure.stats_records import RunStats
from perdure.task import RunOptions
from perdure.wait_records import EventRecord, Sent, TokenRecord, TokenStatus, Wait, wait_key

if TYPE_CHECKING:
    from perdure.app import App
    from perdure.executor import Executor

__all__ = [
    "DEFAULT_GRACE",
    "MIN_GRACE",
    "Admin",
    "PurgeReport",
    "RotationReport",
    "RunDetails",
    "parse_age",
]


@dataclass(frozen=True, slots=True)
class RunDetails:
    """A run as an operator sees it: its record, its journal and its attempts (values' sizes
    and codecs only: showing a run needs neither its blobs nor its key)."""

    run: RunRecord
    """The run, with its arguments and result when they could be read."""
    journal: list[JournalEntry]
    """Its journal entries, without their values' bytes."""
    attempts: list[Attempt]
    """Every attempt, oldest first."""
    unreadable: Exception | None
    """Why the run's values could not be read here (no or a wrong key, a missing blob), if
    so: the run is shown all the same, without them."""
    waits: list[Wait] = field(default_factory=list)
    """The waits it registered (tokens, events, messages), in journal order."""

    @property
    def waiting_on(self) -> Wait | None:
        """What a WAITING run waits for from outside now: its last registered wait, if that
        is what it suspended on (None for a sleep, children, a retry's backoff)."""
        if self.run.status is not RunStatus.WAITING or not self.waits:
            return None
        last = self.waits[-1]
        return last if self.run.waiting_for == wait_key(last.kind, last.key) else None


class Admin:
    """Operations on an App's stored runs and queues (app.admin)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        task: str | None = None,
        tag: str | None = None,
        before: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest runs first (filters and pages: see Store.list_runs), without their values."""
        return await self.app.store.list_runs(
            status=status, task=task, tag=tag, before=before, since=since, until=until, limit=limit
        )

    async def run_details(self, run_id: str) -> RunDetails:
        """The run with its journal and attempts; RunNotFound when there is none."""
        store = self.app.store
        unreadable = None
        try:
            run = await store.get_run(run_id)
        except (CorruptJournal, EncryptionError, StoreRefused) as exc:  # shown all the same
            run, unreadable = await store.get_run(run_id, values=False), exc
        journal = await store.load_journal(run_id, values=False)
        attempts = await store.load_attempts(run_id)
        waits = await store.run_waits(run_id, values=unreadable is None)
        return RunDetails(run, journal, attempts, unreadable, waits)

    async def stream_chunks(
        self, run_id: str, *, after: int = 0, limit: int = 200
    ) -> list[tuple[int, str, Value]]:
        """(position, stream, chunk) of the run's streams after position `after`, at most
        `limit` of them: the streams of its code, not its log lines (see run_logs), however
        many lines come between its chunks."""
        found: list[tuple[int, str, Value]] = []
        while len(found) < limit:
            page = await self.app.store.read_stream(run_id, None, after=after, limit=1000)
            found += [chunk for chunk in page if chunk[1] != LOGS]
            if len(page) < 1000:
                break
            after = page[-1][0]
        return found[:limit]

    async def run_logs(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """(position, line) of the run's log lines after position `after`, oldest first (see
        perdure.run_logs): at, level, logger, message, and step, seq, attempt and traceback
        when they apply. RunNotFound when there is no such run."""
        store = self.app.store
        await store.get_run(run_id, values=False)  # RunNotFound
        chunks = await store.read_stream(run_id, LOGS, after=after, limit=limit)
        return [(position, decoded(value, "a log line")) for position, _name, value in chunks]

    async def follow_logs(
        self, run_id: str, *, after: int = 0
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """The run's log lines after position `after` as they come, until the run ends."""
        from perdure.handle import RunHandle  # (a run of any app, as every admin operation)

        await self.app.store.get_run(run_id, values=False)  # RunNotFound
        async for event in RunHandle(self.app, run_id, Any).events(after=after):
            if event.kind == "log" and event.position is not None:
                yield event.position, event.data

    async def tokens(
        self,
        *,
        app: str | None = None,
        run_id: str | None = None,
        status: TokenStatus | None = None,
        limit: int = 100,
    ) -> list[TokenRecord]:
        """Newest tokens first (of `app`, of one run, in one status), without their data."""
        return await self.app.store.list_tokens(app=app, run_id=run_id, status=status, limit=limit)

    async def complete_token(self, token_id: str, data: Any) -> TokenRecord:
        """Complete a token of any app (see App.complete_token)."""
        return await self.app.signals.complete_token(data, token_id=token_id, any_app=True)

    async def events(
        self, *, app: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest events first, without their payloads."""
        return await self.app.store.list_events(app=app, name=name, limit=limit)

    async def send_event(
        self, name: str, payload: Any, *, idempotency_key: str | None = None
    ) -> Sent:
        """Send an event in the App's name (see App.send_event)."""
        return await self.app.send_event(name, payload, idempotency_key=idempotency_key)

    async def schedules(self, app: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (of `app`), by app and key."""
        return await self.app.store.list_schedules(app)

    async def pause_schedule(self, app: str, key: str) -> ScheduleRecord:
        """Stop firing a schedule."""
        return await schedules.pause(self.app.store, app, key)

    async def resume_schedule(self, app: str, key: str) -> ScheduleRecord:
        """Fire a paused schedule again, from its next tick."""
        return await schedules.resume(self.app.store, app, key)

    async def delete_schedule(self, app: str, key: str) -> bool:
        """Delete a schedule; False when there was none."""
        return await self.app.store.delete_schedule(app, key)

    async def create_schedule(
        self,
        task: str,
        *,
        cron: str,
        tz: str = "UTC",
        key: str | None = None,
        missed: str = "run_once",
    ) -> ScheduleRecord:
        """Create (or replace) a schedule of one of the App's tasks (see App.schedules)."""
        return await self.app.schedules.create(task, cron=cron, tz=tz, key=key, missed=missed)

    async def create_api_key(self, *, name: str, scope: Scope | str) -> tuple[ApiKey, str]:
        """A new API key for the server: its record and the key (shown once, not stored)."""
        return await keys.create(self.app.store, name=name, scope=scope)

    async def api_keys(self) -> list[ApiKey]:
        """Every API key (their ids, names and scopes; never the keys)."""
        return await self.app.store.list_api_keys()

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke an API key; False when there is none or it was revoked already."""
        return await self.app.store.revoke_api_key(key_id)

    async def authorize(self, key: str | None, needed: Scope) -> ApiKey:
        """The key's record if it may make a `needed` request; Unauthorized or Forbidden."""
        return await keys.authorize(self.app.store, key, needed)

    async def replay(
        self,
        run_id: str,
        *,
        from_step: int | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> RunHandle[Any]:
        """Start a new run of the run's task, linked to it (RunRecord.replay_of), with its
        arguments (or `args` and `kwargs`), priority, concurrency key and tags; the run itself
        is left as it is. `from_step` N: the new run reuses the results recorded at the
        journal positions before N (steps, waits, child runs, recorded values: not made again)
        and runs from position N on. RunNotFound; TaskNotFound when this App does not know its
        task; InvalidArguments for new arguments that do not fit, or a position that parts child
        runs from their wait."""
        store = self.app.store
        run = await store.get_run(run_id)
        task = self.app.get_task(run.task)
        if args is None and kwargs is None:
            assert run.args is not None  # (read with its values)
            args, kwargs = task.definition.decode_args(run.id, run.args)
        value = task.encode_args(args or (), kwargs or {})
        reuse_before, children = 0, 0
        if from_step is not None and from_step > 1:
            reuse_before = from_step
            journal = await store.load_journal(run_id)
            children = reused_children(journal, reuse_before, run_id=run_id)
        options = RunOptions(
            priority=run.priority, tags=run.tags, concurrency_key=run.concurrency_key
        )
        new = replace(
            options.new_run(task, value, idempotency_key=None),
            replay_of=run.id,
            reuse_before=reuse_before,
            children_done=children,
        )
        since = store.change_token()
        ((new_id, _created),) = await store.create_runs([new])
        return RunHandle(self.app, new_id, task.result_type, since=since)

    async def find_runs(
        self,
        *,
        task: str | None = None,
        status: RunStatus | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Every run of this App (of `task`, in `status`, created in the last `since` seconds),
        newest first, at most `limit`: what a bulk cancel or replay acts on."""
        store = self.app.store
        await store.open()
        after = None if since is None else store.now() - since
        found: list[RunRecord] = []
        before = None
        while limit is None or len(found) < limit:
            page = await store.list_runs(
                status=status, task=task, since=after, before=before, limit=500
            )
            found += [run for run in page if run.app == self.app.name]
            if len(page) < 500:
                break
            before = page[-1].id
        return found if limit is None else found[:limit]

    async def stranded(self, *, limit: int = 100, every_app: bool = False) -> list[RunRecord]:
        """Runs of this App (of every app in its database with `every_app`) pinned to a version
        of its code that no live worker runs: they wait until a worker of that version starts,
        or until they are migrated."""
        app = None if every_app else self.app.name
        return await self.app.store.stranded_runs(app=app, limit=limit)

    async def check_replays(
        self,
        *,
        runs: int = 100,
        task: str | None = None,
        run_ids: Sequence[str] = (),
        progress: Callable[[ReplayVerdict], None] | None = None,
    ) -> list[ReplayVerdict]:
        """Replay the recorded journals of this App's latest `runs` runs that have one (of
        `task`; or of the runs `run_ids`) against the code of this App, running no step and
        writing nothing: a verdict per run (see Executor.check_replay)."""
        executor = self.app.executor()
        chosen = list(run_ids) or [
            run.id
            for run in await self.find_runs(task=task, limit=runs * 4)
            if run.started_at is not None
        ]
        verdicts: list[ReplayVerdict] = []
        for run_id in chosen:
            if not run_ids and len(verdicts) >= runs:
                break
            checked = await self._check_replay(executor, run_id, skip_empty=not run_ids)
            if checked is None:
                continue  # nothing recorded: nothing to check
            verdict = checked[1]
            verdicts.append(verdict)
            if progress is not None:
                progress(verdict)
        return verdicts

    async def _check_replay(
        self, executor: Executor, run_id: str, *, skip_empty: bool = False
    ) -> tuple[RunRecord, ReplayVerdict] | None:
        """The run and the replay check of its journal against `executor`'s code (None, with
        `skip_empty`, for a run that recorded nothing)."""
        store = self.app.store
        journal = await store.load_journal(run_id)
        if skip_empty and not journal:
            return None
        run = await store.get_run(run_id)
        history = History(journal, await store.load_attempts(run_id))
        return run, await executor.check_replay(run, history)

    async def migrate_runs(
        self,
        run_ids: Sequence[str],
        *,
        dry_run: bool = False,
        progress: Callable[[ReplayVerdict, bool], None] | None = None,
    ) -> list[tuple[ReplayVerdict, bool]]:
        """Move queued or waiting runs to this App's version of the code, each only if the
        replay check of its journal against this code passes: (verdict, moved) per run (not
        moved: it failed the check, a worker took it meanwhile, or `dry_run`)."""
        store = self.app.store
        executor = self.app.executor()
        version = self.app.version
        out: list[tuple[ReplayVerdict, bool]] = []
        for run_id in run_ids:
            checked = await self._check_replay(executor, run_id)
            assert checked is not None  # (never skipped)
            run, verdict = checked
            movable = run.status in (RunStatus.QUEUED, RunStatus.WAITING)
            if verdict.ok and not movable:
                verdict = replace(
                    verdict, ok=False, message=f"run {run_id} is {run.status}: not moved"
                )
            moved = (
                verdict.ok
                and not dry_run
                and await store.repin_run(run_id, lease=run.lease, version=version)
            )
            out.append((verdict, moved))
            if progress is not None:
                progress(verdict, moved)
        return out

    async def stats(
        self,
        *,
        since: float,
        app: str | None = None,
        task: str | None = None,
        buckets: int = 60,
    ) -> RunStats:
        """Runs active now and those that ended in the last `since` seconds, per task (of app
        `app`, default all; see Store.run_stats)."""
        store = self.app.store
        await store.open()
        return await store.run_stats(since=store.now() - since, app=app, task=task, buckets=buckets)

    async def cancel_run(self, run_id: str) -> RunStatus:
        """Cancel a run and its children (see Store.cancel_run); the status after the call."""
        return await self.app.store.cancel_run(run_id)

    async def purge(
        self,
        *,
        older_than: float,
        statuses: Collection[RunStatus] | None = None,
        app: str | None = None,
        grace: float = DEFAULT_GRACE,
        dry_run: bool = False,
        progress: Callable[[PurgeReport], None] | None = None,
    ) -> PurgeReport:
        """Delete runs that ended more than `older_than` seconds ago (in `statuses`, default
        every ended status; of app `app`, default all), then the blobs nothing references."""
        store = self.app.store
        return await purge(
            store,
            store.blobs,
            older_than=older_than,
            statuses=statuses or [s for s in RunStatus if s.terminal],
            app=app,
            grace=grace,
            dry_run=dry_run,
            progress=progress,
        )

    async def rotate_encryption(
        self, *, progress: Callable[[RotationReport], None] | None = None
    ) -> RotationReport:
        """Rewrite every stored value and blob under the current key."""
        store = self.app.store
        return await rotate(store, store.blobs, progress=progress)

    async def queues(self, app: str | None = None) -> list[QueueStats]:
        """Every queue (of app `app`, default all) with its load."""
        return await self.app.store.queue_stats(app)

    async def set_queue(
        self,
        app: str,
        name: str,
        *,
        concurrency: int | None = None,
        unlimited: bool = False,
        paused: bool | None = None,
    ) -> QueueConfig:
        """Change a queue at run time (see Store.set_queue)."""
        return await self.app.store.set_queue(
            app, name, concurrency=concurrency, unlimited=unlimited, paused=paused
        )

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Apply (or list) the pending schema migrations; their names."""
        return await self.app.store.migrate(dry_run=dry_run)
