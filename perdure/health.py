"""A worker's health endpoints, for Kubernetes probes and load balancers (`perdure worker
--health-port N`), served from a thread of their own (the standard library's HTTP server):

- `GET /livez`: 200 while the worker is alive — 503 once another worker declared it dead, or
  its event loop has not run for the stall time (restart it);
- `GET /readyz`: 200 while it serves — 503 before it registered with its store, while it
  drains, or while its store does not answer its heartbeats;
- `GET /drain`: start the drain (as SIGTERM does) and answer once every run is finished or
  released (for a preStop hook: the pod ends only after its runs are safe)."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from perdure.worker import Worker

_DRAIN_MARGIN = 5.0  # seconds beyond the drain timeout a /drain request waits


class HealthServer:
    """The endpoints of `worker` (whose loop is `loop`) on host:port."""

    def __init__(
        self, worker: Worker, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> None:
        self.worker = worker
        self.loop = loop
        handler = _handler(self)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = False  # close() waits for answers in flight (/drain)
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="perdure-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving, after the answers in flight are sent."""
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, str]:
        live, ready, why = self.worker.health()
        if path == "/livez":
            return (200, "ok") if live else (503, why)
        if path == "/readyz":
            return (200, "ok") if ready else (503, why)
        if path == "/drain":
            if not self.worker.finished.is_set():
                self.loop.call_soon_threadsafe(self.worker.stop)
            timeout = self.worker.config.drain_timeout + _DRAIN_MARGIN
            if self.worker.finished.wait(timeout):
                return 200, "drained"
            return 503, f"still draining after {timeout:.0f}s"
        return 404, "not found: /livez, /readyz, /drain"


def _handler(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, text = health.answer(self.path.split("?", 1)[0])
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds: not worth a log line each

    return Handler
