"""The REST API: routes over the App, request and response schemas (msgspec structs, from which
the OpenAPI document is made), API keys by scope, one error shape."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from perdure import errors, metrics
from perdure.app import App
from perdure.records import QueueStats, RunStatus, ScheduleRecord, Scope
from perdure.server.openapi import openapi
from perdure.server.realtime import metrics_endpoint, run_stream
from perdure.server.schemas import (
    CompleteTokenRequest,
    ErrorBody,
    ErrorOut,
    LogLineOut,
    MessageOut,
    QueueOut,
    ReplayRequest,
    ResultOut,
    RunOut,
    RunPage,
    ScheduleOut,
    SendEventRequest,
    SendMessageRequest,
    SentOut,
    StatsOut,
    TokenOut,
    Triggered,
    TriggerRequest,
)
from perdure.views import (
    queue_dict,
    run_dict,
    schedule_dict,
    stats_dict,
    token_dict,
)
from perdure.wait_records import TokenRecord, TokenStatus

MAX_RESULT_WAIT = 60.0
"""Seconds GET /runs/{id}/result waits at most for a run to end."""
MAX_PAGE = 500
"""Runs in one page of GET /runs at most."""
MAX_LOG_PAGE = 5000
"""Log lines in one answer of GET /runs/{id}/logs at most."""
MAX_STATS_WINDOW = 90 * 86400.0
"""Seconds back GET /stats looks at most."""


_STATUS = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.RunNotFound: 404,
    errors.TaskNotFound: 404,
    errors.TokenNotFound: 404,
    errors.TokenAlreadyCompleted: 409,
    errors.InvalidArguments: 422,
    errors.PayloadTooLarge: 413,
    errors.SecretLeakError: 422,
    errors.SerializationError: 422,
    errors.ConfigurationError: 422,
    errors.StoreUnavailable: 503,
}


def _error(status: int, kind: str, message: str) -> Response:
    body = msgspec.json.encode(ErrorOut(ErrorBody(type=kind, message=message)))
    return Response(body, status_code=status, media_type="application/json")


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


Handler = Callable[[App, Request], Awaitable[Response]]


def _route(
    app: App, scope: Scope | None, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """`handler` behind the API key check (scope None: no key needed) and the error shape."""

    async def endpoint(request: Request) -> Response:
        try:
            if scope is not None:
                auth = request.headers.get("authorization", "")
                key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
                await app.admin.authorize(key, scope)
            return await handler(app, request)
        except errors.Unauthorized:
            return _error(401, "Unauthorized", "unauthorized")  # no detail
        except msgspec.ValidationError as exc:
            return _error(422, "InvalidRequest", str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, "InvalidRequest", f"the body is not JSON: {exc}")
        except errors.PerdureError as exc:
            status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
            return _error(status, type(exc).__name__, str(exc))
        except (TypeError, ValueError) as exc:
            return _error(422, "InvalidRequest", str(exc))

    return endpoint


async def _body(request: Request, kind: type[Any]) -> Any:
    return msgspec.json.decode(await request.body() or b"{}", type=kind)


def _run_out(data: dict[str, Any]) -> RunOut:
    return msgspec.convert(data, RunOut)


# -- endpoints ---------------------------------------------------------------------------------


async def healthz(app: App, request: Request) -> Response:
    return _json({"ok": True})


async def readyz(app: App, request: Request) -> Response:
    try:
        await app.admin.list_runs(limit=1)
    except errors.StoreError as exc:
        return _error(503, type(exc).__name__, str(exc))
    return _json({"ok": True})


async def trigger(app: App, request: Request) -> Response:
    task = app.get_task(request.path_params["task"])
    body: TriggerRequest = await _body(request, TriggerRequest)
    options: dict[str, Any] = {"priority": body.priority, "tags": body.tags}
    for name in ("idempotency_key", "delay", "ttl", "concurrency_key"):
        if getattr(body, name) is not None:
            options[name] = getattr(body, name)
    handle = await task.trigger(*body.args, **body.kwargs, **options)
    return _json(Triggered(id=handle.id, created=handle.created), 201)


async def get_run(app: App, request: Request) -> Response:
    details = await app.admin.run_details(request.path_params["id"])
    return _json(_run_out(run_dict(details.run, values=details.unreadable is None)))


async def list_runs(app: App, request: Request) -> Response:
    q = request.query_params
    limit = min(int(q.get("limit", "50")), MAX_PAGE)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    status = RunStatus(q["status"]) if q.get("status") else None
    runs = await app.admin.list_runs(
        status=status,
        task=q.get("task"),
        tag=q.get("tag"),
        before=q.get("cursor"),
        since=_time(q.get("since")),
        until=_time(q.get("until")),
        limit=limit,
    )
    page = [_run_out(run_dict(run, values=False)) for run in runs]
    return _json(RunPage(runs=page, next=runs[-1].id if len(runs) == limit else None))


def _time(text: str | None) -> float | None:
    """A time in a query: POSIX seconds, or an ISO 8601 time with its offset."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        when = dt.datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise ValueError(f"a time needs its offset (e.g. +00:00): {text!r}") from None
        return when.timestamp()


async def cancel_run(app: App, request: Request) -> Response:
    status = await app.admin.cancel_run(request.path_params["id"])
    return _json({"id": request.path_params["id"], "status": str(status)})


async def run_logs(app: App, request: Request) -> Response:
    q = request.query_params
    lines = await app.admin.run_logs(
        request.path_params["id"],
        after=int(q.get("after", "0")),
        limit=min(int(q.get("limit", "1000")), MAX_LOG_PAGE),
    )
    return _json([msgspec.convert({"position": p, **line}, LogLineOut) for p, line in lines])


async def replay_run(app: App, request: Request) -> Response:
    body = await _body(request, ReplayRequest)
    if body.from_step is not None and body.from_step < 1:
        raise ValueError("from_step must be at least 1")
    handle = await app.admin.replay(
        request.path_params["id"], from_step=body.from_step, args=body.args, kwargs=body.kwargs
    )
    return _json(Triggered(id=handle.id, created=handle.created), 201)


async def stats(app: App, request: Request) -> Response:
    q = request.query_params
    since = float(q.get("since", "86400"))
    if not 0 < since <= MAX_STATS_WINDOW:
        raise ValueError(f"since must be in (0, {MAX_STATS_WINDOW:.0f}] seconds")
    found = await app.admin.stats(
        since=since, app=app.name, task=q.get("task") or None, buckets=int(q.get("buckets", "60"))
    )
    return _json(msgspec.convert(stats_dict(found), StatsOut))


async def run_result(app: App, request: Request) -> Response:
    run_id = request.path_params["id"]
    wait = min(float(request.query_params.get("wait", "0")), MAX_RESULT_WAIT)
    handle = await app.handle(run_id)
    with contextlib.suppress(TimeoutError, errors.PerdureError):  # said from the stored run
        await asyncio.wait_for(_ended(handle), timeout=max(0.0, wait))
    run = (await app.admin.run_details(run_id)).run
    out = run_dict(run)
    return _json(
        ResultOut(
            id=run_id,
            status=str(run.status),
            done=run.status.terminal,
            result=out.get("result"),
            error=out.get("error"),
        )
    )


async def _ended(handle: Any) -> None:
    try:
        await handle.result()
    except errors.PerdureError:
        return


async def complete_token(app: App, request: Request) -> Response:
    body: CompleteTokenRequest = await _body(request, CompleteTokenRequest)
    token = await app.admin.complete_token(request.path_params["id"], body.data)
    return _json(_token_out(token))


async def receive_webhook(app: App, request: Request) -> Response:
    """Authenticated by its signature, not a key (see perdure.webhooks)."""
    body = await request.body()
    handle = await app.receive_webhook(request.path_params["name"], request.headers, body)
    return _json({"run_id": handle.id, "created": handle.created}, 202)


async def complete_named_token(app: App, request: Request) -> Response:
    body: CompleteTokenRequest = await _body(request, CompleteTokenRequest)
    handle = await app.handle(request.path_params["id"])
    await handle.complete_token(request.path_params["name"], body.data)
    return _json({"run_id": handle.id, "name": request.path_params["name"], "completed": True})


def _token_out(token: TokenRecord) -> TokenOut:
    return msgspec.convert(token_dict(token), TokenOut)


async def list_tokens(app: App, request: Request) -> Response:
    q = request.query_params
    tokens = await app.admin.tokens(
        app=app.name,
        run_id=q.get("run"),
        status=None if not q.get("status") else TokenStatus(q["status"]),
        limit=min(int(q.get("limit", "50")), MAX_PAGE),
    )
    return _json([_token_out(t) for t in tokens])


async def send_event(app: App, request: Request) -> Response:
    body: SendEventRequest = await _body(request, SendEventRequest)
    sent = await app.send_event(body.name, body.payload, idempotency_key=body.idempotency_key)
    return _json(SentOut(id=sent.id, created=sent.created, woken=sent.woken), 202)


async def send_message(app: App, request: Request) -> Response:
    body: SendMessageRequest = await _body(request, SendMessageRequest)
    handle = await app.handle(request.path_params["id"])
    sent = await handle.send(body.topic, body.data, idempotency_key=body.idempotency_key)
    return _json(MessageOut(id=sent), 202)


def _queue_out(q: QueueStats) -> QueueOut:
    return msgspec.convert(queue_dict(q), QueueOut)


async def list_queues(app: App, request: Request) -> Response:
    return _json([_queue_out(q) for q in await app.admin.queues(app.name)])


async def pause_queue(app: App, request: Request) -> Response:
    await app.admin.set_queue(app.name, request.path_params["name"], paused=True)
    return await list_queues(app, request)


async def resume_queue(app: App, request: Request) -> Response:
    await app.admin.set_queue(app.name, request.path_params["name"], paused=False)
    return await list_queues(app, request)


def _schedule_out(s: ScheduleRecord) -> ScheduleOut:
    return msgspec.convert(schedule_dict(s), ScheduleOut)


async def list_schedules(app: App, request: Request) -> Response:
    return _json([_schedule_out(s) for s in await app.admin.schedules(app.name)])


async def pause_schedule(app: App, request: Request) -> Response:
    done = await app.admin.pause_schedule(app.name, request.path_params["key"])
    return _json(_schedule_out(done))


async def resume_schedule(app: App, request: Request) -> Response:
    done = await app.admin.resume_schedule(app.name, request.path_params["key"])
    return _json(_schedule_out(done))


# -- the app -----------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, Scope | None, Handler, Any, Any, str]] = [
    # method, path, scope, handler, request schema, response schema, summary
    ("GET", "/healthz", None, healthz, None, None, "The server is up"),
    ("GET", "/readyz", None, readyz, None, None, "The server can reach its store"),
    (
        "GET",
        "/metrics",
        Scope.READ,
        metrics_endpoint,
        None,
        None,
        "Prometheus metrics (text format): runs by queue, and a worker's when one runs here",
    ),
    (
        "POST",
        "/webhooks/{name}",
        None,
        receive_webhook,
        None,
        None,
        "A signed webhook delivery (no key: its signature authenticates it)",
    ),
    (
        "POST",
        "/api/v1/tasks/{task}/trigger",
        Scope.TRIGGER,
        trigger,
        TriggerRequest,
        Triggered,
        "Trigger a run of a task",
    ),
    ("GET", "/api/v1/runs", Scope.READ, list_runs, None, RunPage, "List runs, newest first"),
    ("GET", "/api/v1/runs/{id}", Scope.READ, get_run, None, RunOut, "Get a run"),
    ("POST", "/api/v1/runs/{id}/cancel", Scope.ADMIN, cancel_run, None, None, "Cancel a run"),
    (
        "GET",
        "/api/v1/runs/{id}/logs",
        Scope.READ,
        run_logs,
        None,
        list[LogLineOut],
        "A run's log lines, oldest first (?after=POSITION, ?limit=N)",
    ),
    (
        "POST",
        "/api/v1/runs/{id}/replay",
        Scope.TRIGGER,
        replay_run,
        ReplayRequest,
        Triggered,
        "Start a new run of the run's task, linked to it (from a journal position: reusing "
        "what it recorded before)",
    ),
    (
        "GET",
        "/api/v1/stats",
        Scope.READ,
        stats,
        None,
        StatsOut,
        "Runs active now and ended in the window, per task (?since=SECONDS, ?task=)",
    ),
    (
        "GET",
        "/api/v1/runs/{id}/result",
        Scope.READ,
        run_result,
        None,
        ResultOut,
        "A run's result (?wait=SECONDS)",
    ),
    (
        "POST",
        "/api/v1/runs/{id}/messages",
        Scope.TRIGGER,
        send_message,
        SendMessageRequest,
        MessageOut,
        "Put a message in a run's mailbox",
    ),
    (
        "GET",
        "/api/v1/tokens",
        Scope.READ,
        list_tokens,
        None,
        list[TokenOut],
        "List tokens (?run=, ?status=)",
    ),
    (
        "GET",
        "/api/v1/runs/{id}/stream",
        Scope.READ,
        run_stream,
        None,
        None,
        "Server-sent events of a run (status, metadata, chunks; Last-Event-ID resumes)",
    ),
    (
        "POST",
        "/api/v1/runs/{id}/tokens/{name}/complete",
        Scope.TRIGGER,
        complete_named_token,
        CompleteTokenRequest,
        None,
        "Complete a run's named token (its wait_for_token(name))",
    ),
    (
        "POST",
        "/api/v1/tokens/{id}/complete",
        Scope.TRIGGER,
        complete_token,
        CompleteTokenRequest,
        TokenOut,
        "Complete a token",
    ),
    (
        "POST",
        "/api/v1/events",
        Scope.TRIGGER,
        send_event,
        SendEventRequest,
        SentOut,
        "Send an event",
    ),
    (
        "GET",
        "/api/v1/queues",
        Scope.READ,
        list_queues,
        None,
        list[QueueOut],
        "List queues with their load",
    ),
    (
        "POST",
        "/api/v1/queues/{name}/pause",
        Scope.ADMIN,
        pause_queue,
        None,
        list[QueueOut],
        "Pause a queue",
    ),
    (
        "POST",
        "/api/v1/queues/{name}/resume",
        Scope.ADMIN,
        resume_queue,
        None,
        list[QueueOut],
        "Resume a queue",
    ),
    (
        "GET",
        "/api/v1/schedules",
        Scope.READ,
        list_schedules,
        None,
        list[ScheduleOut],
        "List schedules",
    ),
    (
        "POST",
        "/api/v1/schedules/{key}/pause",
        Scope.ADMIN,
        pause_schedule,
        None,
        ScheduleOut,
        "Pause a schedule",
    ),
    (
        "POST",
        "/api/v1/schedules/{key}/resume",
        Scope.ADMIN,
        resume_schedule,
        None,
        ScheduleOut,
        "Resume a schedule",
    ),
]


def create_app(
    app: App, *, dashboard: bool = True, open_access: bool = False, worker: bool = False
) -> Starlette:
    """The ASGI application serving `app`'s API and (unless `dashboard` is False) its
    dashboard at /. `open_access`: the dashboard needs no key (perdure dev, on loopback only;
    the API still does). `worker`: a worker of the app runs in the server's event loop from
    startup to shutdown (perdure dev)."""
    document = openapi(app.name, ROUTES)
    metrics.enable()
    metrics.watch_queues()

    async def spec(_app: App, request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [
        Route(path, _route(app, scope, handler), methods=[method])
        for method, path, scope, handler, _req, _resp, _summary in ROUTES
    ]
    spec_route = _route(app, Scope.READ, spec)  # every endpoint but health needs a key
    routes.append(Route("/api/v1/openapi.json", spec_route, methods=["GET"]))
    from perdure.server.worker_api import worker_routes

    routes += worker_routes(app)
    if dashboard:
        from perdure.server.dashboard import Dashboard

        routes += Dashboard(app, open_access=open_access).routes()

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "NotFound", f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        where = request.url.path
        return _error(405, "MethodNotAllowed", f"{request.method} is not allowed on {where}")

    @contextlib.asynccontextmanager
    async def lifespan(_server: Starlette) -> AsyncIterator[None]:
        running = None
        if worker:
            await app.store.open()
            the_worker = app.worker()
            running = asyncio.create_task(the_worker.run(install_signal_handlers=False))
        try:
            yield
        finally:
            if running is not None:
                the_worker.stop()  # drain: finish or release every run
                await running
            await app.close()  # what the server wrote is flushed before the process ends

    server = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )
    return server
