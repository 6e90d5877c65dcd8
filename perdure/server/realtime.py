"""What the server streams and exposes as it happens: a run's server-sent events, and the
Prometheus metrics of the process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from perdure import metrics
from perdure.app import App
from perdure.views import value_json


async def run_stream(app: App, request: Request) -> Response:
    """Server-sent events of a run: `status`, `metadata`, `chunk` and `log` events as they
    happen, until the run ends. A chunk's event id is its position: a client that reconnects with
    Last-Event-ID gets the chunks after it (and the current status and metadata again)."""
    handle = await app.handle(request.path_params["id"])
    last = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    try:
        after = int(last)
    except ValueError:
        raise ValueError(f"Last-Event-ID must be a chunk position, got {last!r}") from None

    async def events() -> AsyncIterator[bytes]:
        async for event in handle.events(after=after):
            if event.kind == "keepalive":
                yield b": keepalive\n\n"
                continue
            lines = [f"event: {event.kind}"]
            if event.position is not None:
                lines.append(f"id: {event.position}")
            lines.append("data: " + msgspec.json.encode(value_json(event.data)).decode())
            yield ("\n".join(lines) + "\n\n").encode()
        yield b"event: end\ndata: {}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def metrics_endpoint(app: App, request: Request) -> Response:
    """Prometheus metrics: the app's runs by queue (read at most every few seconds), and, when
    a worker runs in this process (perdure dev), its own."""
    if metrics.queues_stale():
        metrics.queues_read(await app.admin.queues(app.name))
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
