"""The App: registry of tasks and steps, holder of the store, starter of workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from perdure import webhooks
from perdure.admin import Admin
from perdure.blobs import open_blobs
from perdure.config import DEFAULT_BLOB_URL, DEFAULT_DATABASE_URL, WorkerConfig, env_float
from perdure.crypto import Keyring
from perdure.errors import ConfigurationError, RunNotFound, TaskNotFound
from perdure.executor import Executor
from perdure.handle import RunHandle
from perdure.hooks import HookDecorators, Hooks
from perdure.middleware import Middleware
from perdure.records import STRATEGIES, QueueConfig
from perdure.retry import Retry
from perdure.schedules import Cron, Schedules
from perdure.secrets import Secret
from perdure.signals import Signals
from perdure.step import Step
from perdure.store import RedisTier, open_store
from perdure.store.base import Store
from perdure.store.remote import open_remote
from perdure.task import Task
from perdure.values import DEFAULT_INLINE_LIMIT, RecentResults
from perdure.versions import code_digest
from perdure.wait_records import Sent, Token, TokenRecord
from perdure.webhooks import Webhook
from perdure.worker import Worker
from perdure.worker_api import WorkerApi

DEFAULT_MAX_VALUE_SIZE = 64 * 1024 * 1024
P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    """What `@app.task(...)` returns."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class StepDecorator(Protocol):
    """What `@app.step(...)` returns."""

    def __call__(self, fn: Callable[P, R], /) -> Step[P, R]: ...


class App(HookDecorators):
    """A perdure application: its tasks, its store and its blob store.

    `database` defaults to $PERDURE_DATABASE_URL, else sqlite:///.perdure/perdure.db;
    `blobs` to $PERDURE_BLOB_URL, else file://.perdure/blobs; `inline_limit` (bytes above which
    values go to the blob store) to $PERDURE_INLINE_LIMIT, else 256 KiB; `max_value_size` (bytes
    above which a value is refused with PayloadTooLarge) to $PERDURE_MAX_VALUE_SIZE, else 64 MiB;
    `version` (of its code: a run is resumed only by workers of the version that started it) to
    $PERDURE_VERSION, else a digest of its tasks' and steps' code (perdure.versions).

    With `server` ($PERDURE_SERVER_URL) and `api_key` ($PERDURE_API_KEY, a key of scope
    `worker`), the App reaches its store through that perdure server's worker API instead of a
    database: a hybrid worker (perdure.store.remote); `database` is then not used.

    With `redis` ($PERDURE_REDIS_URL, a redis:// URL; PostgreSQL only), wake-ups go between
    processes through Redis and workers keep a presence there that expires within seconds of
    their host's death (perdure.store.redis_tier); PostgreSQL stays the source of truth.
    """

    def __init__(
        self,
        name: str,
        *,
        database: str | None = None,
        blobs: str | None = None,
        inline_limit: int | None = None,
        max_value_size: int | None = None,
        version: str | None = None,
        server: str | None = None,
        api_key: str | None = None,
        redis: str | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("App needs a name")
        self.name = name
        self.database = database or os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL
        self.blobs = blobs or os.environ.get("PERDURE_BLOB_URL") or DEFAULT_BLOB_URL
        self.server = server or os.environ.get("PERDURE_SERVER_URL") or None
        self.api_key = api_key or os.environ.get("PERDURE_API_KEY") or None
        self.redis_url = redis or os.environ.get("PERDURE_REDIS_URL") or None
        if self.server is not None and self.redis_url is not None:
            raise ConfigurationError(
                f"App {name!r} is a hybrid worker of the server {self.server}: it reaches "
                "nothing but its server; give Redis to the server (unset redis= / "
                "$PERDURE_REDIS_URL here)"
            )
        if self.server is not None and not self.api_key:
            raise ConfigurationError(
                f"App {name!r} reaches its store through the server {self.server}: it needs an "
                "API key of scope worker (api_key= or $PERDURE_API_KEY)"
            )
        self.inline_limit = (
            inline_limit
            if inline_limit is not None
            else int(env_float("PERDURE_INLINE_LIMIT", DEFAULT_INLINE_LIMIT))
        )
        self.max_value_size = (
            max_value_size
            if max_value_size is not None
            else int(env_float("PERDURE_MAX_VALUE_SIZE", DEFAULT_MAX_VALUE_SIZE))
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.steps: dict[str, Step[Any, Any]] = {}
        self.queues: dict[str, QueueConfig] = {}
        self.results = RecentResults()
        """Results of the runs this process's workers completed lately: a handle waiting for
        one in the same process needs no read."""
        self.signals = Signals(self)
        """Token completions, events and messages sent to runs."""
        self.webhooks: dict[str, Webhook] = {}
        """Webhooks declared with app.webhook, by name."""
        self.schedules = Schedules(self)
        """Cron schedules: declared with @app.task(schedule=...), or made at run time."""
        self._store: Store | None = None
        self._redis: RedisTier | None = None
        self._worker_api: WorkerApi | None = None
        self.hooks = Hooks()
        """Lifecycle hooks of every task (app.on_failure and the others; see perdure.hooks)."""
        self.middlewares: list[Middleware] = []
        """What wraps every run and every step, in order (app.middleware)."""
        self._version = version or os.environ.get("PERDURE_VERSION") or None
        self._digest: tuple[tuple[int, int], str] | None = None

    @property
    def version(self) -> str:
        """The version of this app's code: as given, else $PERDURE_VERSION, else a digest of its
        registered tasks' and steps' code (worked out again when more are registered)."""
        if self._version is not None:
            return self._version
        registered = (len(self.tasks), len(self.steps))
        if self._digest is None or self._digest[0] != registered:
            functions = [("task", name, task.fn) for name, task in self.tasks.items()]
            functions += [("step", name, step.fn) for name, step in self.steps.items()]
            self._digest = (registered, code_digest(functions))
        return self._digest[1]

    def __repr__(self) -> str:
        return f"App({self.name!r}, database={self.database!r})"

    @property
    def store(self) -> Store:
        """The store (opened on first use)."""
        if self._store is None and self.server is not None:
            assert self.api_key is not None
            keyring = Keyring.from_env()
            self._store = open_remote(
                self.server,
                api_key=self.api_key,
                blobs=open_blobs(self.blobs, keyring=keyring),
                inline_limit=self.inline_limit,
                keyring=keyring,
            )
        if self._store is None:
            keyring = Keyring.from_env()  # PERDURE_ENCRYPTION_KEY (and old keys)
            self._store = open_store(
                self.database,
                blobs=open_blobs(self.blobs, keyring=keyring),
                inline_limit=self.inline_limit,
                keyring=keyring,
                redis=self.redis,
            )
        return self._store

    @property
    def redis(self) -> RedisTier | None:
        """The Redis tier (None without redis= / $PERDURE_REDIS_URL)."""
        if self._redis is None and self.redis_url is not None:
            self._redis = RedisTier(self.redis_url)
        return self._redis

    @property
    def worker_api(self) -> WorkerApi:
        """The worker API of this app's store, for hybrid workers (what `perdure server` serves
        under /api/v1/worker)."""
        if self._worker_api is None:
            self._worker_api = WorkerApi(self)
        return self._worker_api

    @property
    def admin(self) -> Admin:
        """Operations on the stored runs and queues: list, show, cancel, purge, rotate keys,
        migrate (what the CLI and the server call)."""
        return Admin(self)

    async def close(self) -> None:
        """Flush and close the store."""
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    # -- registration ------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        queue: str = "default",
        concurrency: int | None = None,
        timeout: float | None = None,
        serializer: str = "msgpack",
        max_steps: int | None = None,
        on_event: str | None = None,
        schedule: Cron | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        queue: str = "default",
        concurrency: int | None = None,
        timeout: float | None = None,
        serializer: str = "msgpack",
        max_steps: int | None = None,
        on_event: str | None = None,
        schedule: Cron | None = None,
    ) -> Any:
        """Register a durable task (sync or async). Options: `retry` (task-level retries from
        the last checkpoint), `queue` (a name; limits via app.queue), `concurrency` (runs of
        this task running at once, over every worker), `timeout` (seconds per attempt),
        `serializer` ("msgpack", or "pickle" to opt in to pickle), `max_steps` (journal
        positions a run may take: steps, sleeps, recorded values, child triggers; a run past
        it fails with TooManySteps, so a runaway loop cannot grow its journal without end),
        `on_event` (an event name: each event sent with that name triggers a run, with the
        payload as its one argument), `schedule` (a perdure.Cron: each tick triggers one run,
        with the tick's time as its one argument)."""
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if max_steps is not None and max_steps < 1:
            raise ConfigurationError(f"max_steps must be at least 1, got {max_steps}")

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or fn.__qualname__
            if task_name in self.tasks:
                raise ConfigurationError(
                    f"task {task_name!r} is registered twice in app {self.name!r}"
                )
            task: Task[Any, Any] = Task(
                self,
                fn,
                name=task_name,
                retry=retry,
                queue=queue,
                concurrency=concurrency,
                timeout=timeout,
                serializer=serializer,
                max_steps=max_steps,
            )
            if on_event is not None:
                self.signals.triggered_by(on_event, task)
            if schedule is not None:
                self.schedules.declare(task, schedule)
            self.tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def step(
        self,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> StepDecorator: ...

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a checkpointed step (sync or async). Options: `retry`, `timeout`."""

        def register(fn: Callable[..., Any]) -> Step[Any, Any]:
            step: Step[Any, Any] = Step(
                fn, name=name or fn.__qualname__, retry=retry, timeout=timeout
            )
            self.steps[step.name] = step
            return step

        return register if fn is None else register(fn)

    def middleware(self, wrap: Middleware) -> Middleware:
        """Add `wrap` around every execution of a run and every attempt of a step's body (a
        function of the perdure.Call that returns an async context manager), inside the ones
        added before it; returns it (a decorator). See perdure.middleware."""
        self.middlewares.append(wrap)
        return wrap

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
        rate_by_key: bool = False,
        strategy: str = "queue",
    ) -> QueueConfig:
        """Declare a queue and its limits: `concurrency` (runs running at once over every
        worker), `key_concurrency` (at once per concurrency key), `rate_limit` ((N, seconds):
        at most N starts in any window of that many seconds; per key with `rate_by_key`), and
        `strategy` when a run does not fit: "queue" (it waits), "cancel-newest" (it is
        cancelled), "cancel-in-progress" (the running ones are cancelled and it starts).
        Workers record it when they start; `perdure queues set` changes it at run time."""
        for what, value in (("concurrency", concurrency), ("key_concurrency", key_concurrency)):
            if value is not None and value < 1:
                raise ConfigurationError(f"queue {name!r}: {what} must be at least 1, got {value}")
        if strategy not in STRATEGIES:
            raise ConfigurationError(
                f"queue {name!r}: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        if rate_limit is not None and (rate_limit[0] < 1 or rate_limit[1] <= 0):
            raise ConfigurationError(
                f"queue {name!r}: rate_limit is (starts >= 1, seconds > 0), got {rate_limit!r}"
            )
        config = QueueConfig(
            name=name,
            concurrency=concurrency,
            key_concurrency=key_concurrency,
            rate_limit=rate_limit[0] if rate_limit else None,
            rate_period=float(rate_limit[1]) if rate_limit else None,
            rate_by_key=rate_by_key,
            strategy=strategy,
        )
        self.queues[name] = config
        return config

    # -- runs --------------------------------------------------------------------------------

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task `name`."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise TaskNotFound(
                f"task {name!r} is not registered in app {self.name!r} (known: {known}); "
                "did you import the module that defines it?"
            ) from None

    # -- webhooks ----------------------------------------------------------------------------

    def webhook(
        self,
        name: str,
        *,
        secret: Secret | str,
        task: Task[Any, Any] | str,
        preset: str = "perdure",
        tolerance: float = 300.0,
    ) -> Webhook:
        """Declare `POST /webhooks/{name}` on the server: a request signed with `secret` (a
        perdure.secret, or the name of one) and fresh (within `tolerance` seconds) triggers
        `task` with its JSON payload, once per delivery id. `preset`: "perdure", "stripe" or
        "github" (their header conventions; see perdure.webhooks)."""
        task_name = task if isinstance(task, str) else task.name
        hook = Webhook(name, task_name, secret, preset, tolerance)
        webhooks.check(hook)
        if name in self.webhooks:
            raise ConfigurationError(f"webhook {name!r} is declared twice in app {self.name!r}")
        self.webhooks[name] = hook
        return hook

    async def receive_webhook(
        self, name: str, headers: Mapping[str, str], body: bytes
    ) -> RunHandle[Any]:
        """Verify a webhook request and trigger its task (see webhook); Unauthorized when the
        request is not signed, stale or forged (nothing is triggered)."""
        hook = self.webhooks.get(name)
        if hook is None:
            raise TaskNotFound(f"no webhook {name!r} in app {self.name!r}")
        delivery, payload = webhooks.verify(hook, headers, body, now=self.store.now())
        task = self.get_task(hook.task)
        return await task.trigger(payload, idempotency_key=f"perdure:webhook:{name}:{delivery}")

    # -- tokens and events -------------------------------------------------------------------

    async def create_token(
        self,
        *,
        timeout: float | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Token:
        """A token made outside any run (inside one, use perdure.create_token): a run waits
        for it with perdure.wait_for_token(token), a person or a system completes it."""
        return await self.signals.create_token(
            timeout=timeout, tags=tags, idempotency_key=idempotency_key
        )

    async def complete_token(self, token: Token | str, data: Any = None) -> TokenRecord:
        """Complete a token (a Token or its id) with `data`, waking the runs waiting for it.
        TokenNotFound; TokenAlreadyCompleted when it was completed (the first completion
        stands) or timed out before."""
        token_id = token.id if isinstance(token, Token) else token
        return await self.signals.complete_token(data, token_id=token_id)

    async def get_token(self, token_id: str) -> TokenRecord:
        """A token, with its status and completion data; TokenNotFound."""
        return await self.store.get_token(token_id)

    async def send_event(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> Sent:
        """Send an event: it wakes every run waiting for `name` whose match its payload fits
        (perdure.wait_for_event), and triggers a run of each task declared with
        on_event=name, once per event (a repeated idempotency key does nothing again)."""
        return await self.signals.send_event(name, payload, idempotency_key=idempotency_key)

    async def handle(self, run_id: str) -> RunHandle[Any]:
        """The handle of an existing run."""
        run = await self.store.get_run(run_id)
        task = self.tasks.get(run.task)
        if run.app != self.name:
            raise RunNotFound(f"run {run_id} belongs to app {run.app!r}, not {self.name!r}")
        return RunHandle(self, run_id, task.result_type if task else Any)

    # -- workers -----------------------------------------------------------------------------

    def worker(self, *, concurrency: int | None = None, **settings: Any) -> Worker:
        """A worker for this app's tasks (settings: see WorkerConfig)."""
        if concurrency is not None:
            settings["concurrency"] = concurrency
        config = WorkerConfig(**settings)
        executor = self.executor(config)
        return Worker(
            self.store,
            app=self.name,
            tasks=list(self.tasks),
            execute=executor,
            config=config,
            queues=list(self.queues.values()),
            task_limits={
                name: t.concurrency for name, t in self.tasks.items() if t.concurrency is not None
            },
            schedules=list(self.schedules.declared.values()),
            version=self.version,
            presence=self.redis,
        )

    def executor(self, config: WorkerConfig | None = None) -> Executor:
        """What executes this app's runs (and checks their journals against its code)."""
        return Executor(
            self.store,
            {name: t.definition for name, t in self.tasks.items()},
            config or WorkerConfig(),
            results=self.results,
            middleware=self.middlewares,
            hooks=self.hooks,
        )

    async def run_worker(self, *, concurrency: int | None = None, **settings: Any) -> None:
        """Run a worker until SIGTERM/SIGINT, then drain. While the store cannot be reached,
        the worker waits for it (with backoff, saying so); a store that is configured wrongly
        (ConfigurationError) ends it at once."""
        await self.worker(concurrency=concurrency, **settings).run()
