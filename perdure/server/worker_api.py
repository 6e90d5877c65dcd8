"""The worker API's routes (hybrid workers, perdure.store.remote): MessagePack bodies, a key of
scope `worker`, the API's error shape, the store's clock in a header of every answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from perdure.records import Scope
from perdure.server.api import _route
from perdure.worker_api import CLOCK_HEADER

if TYPE_CHECKING:
    from perdure.app import App

MSGPACK = "application/msgpack"


def _answer(app: App, body: bytes) -> Response:
    clock = f"{app.worker_api.now():.6f}"
    return Response(body, media_type=MSGPACK, headers={CLOCK_HEADER: clock})


async def batch(app: App, request: Request) -> Response:
    return _answer(app, await app.worker_api.batch(await request.body()))


async def changes(app: App, request: Request) -> Response:
    return _answer(app, await app.worker_api.changes(await request.body()))


async def upload(app: App, request: Request) -> Response:
    return _answer(app, await app.worker_api.upload(await request.body()))


async def session(app: App, request: Request) -> Response:
    worker_id = request.path_params["worker_id"]
    clock = f"{app.worker_api.now():.6f}"
    stream = app.worker_api.session(worker_id)
    return StreamingResponse(stream, media_type=MSGPACK, headers={CLOCK_HEADER: clock})


def worker_routes(app: App) -> list[BaseRoute]:
    """The worker API of `app`, under /api/v1/worker."""
    return [
        Route("/api/v1/worker/batch", _route(app, Scope.WORKER, batch), methods=["POST"]),
        Route("/api/v1/worker/changes", _route(app, Scope.WORKER, changes), methods=["POST"]),
        Route("/api/v1/worker/upload", _route(app, Scope.WORKER, upload), methods=["POST"]),
        Route(
            "/api/v1/worker/session/{worker_id}",
            _route(app, Scope.WORKER, session),
            methods=["POST"],
        ),
    ]
