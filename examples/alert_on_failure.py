"""An alert when a run fails for good: a lifecycle hook that posts to a webhook (Slack, Teams,
PagerDuty: any URL that takes JSON). It fires once per failed run — after the last retry, not at
each attempt — and a hook that fails never fails the run.

    ALERT_WEBHOOK_URL=https://hooks.slack.com/... perdure worker examples.alert_on_failure:app

Run it as a demo of its own (a fresh embedded store, and a local HTTP server standing in for
the chat's webhook):

    python examples/alert_on_failure.py
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import perdure

if __name__ == "__main__":  # the demo: its own store in a temporary folder
    _HOME = tempfile.mkdtemp(prefix="perdure-alerts-")
    os.environ.setdefault("PERDURE_DATABASE_URL", f"sqlite:///{_HOME}/perdure.db")
    os.environ.setdefault("PERDURE_BLOB_URL", f"file://{_HOME}/blobs")

app = perdure.App("billing")


@app.step(name="charge", retry=perdure.Retry(max_attempts=1))
async def charge(customer: str) -> str:
    raise ConnectionError(f"the payment provider refused {customer}")


@app.task(name="invoice", retry=perdure.Retry(max_attempts=2, min_timeout=0.05, jitter=False))
async def invoice(customer: str) -> str:
    return await charge(customer)


@app.on_failure
def alert(event: perdure.Lifecycle) -> None:  # a sync hook runs in a thread
    assert event.error is not None
    text = (
        f":rotating_light: {event.task} run {event.run_id} failed after {event.attempt} "
        f"attempt(s): {event.error.message}"
    )
    request = urllib.request.Request(
        os.environ["ALERT_WEBHOOK_URL"],
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def _webhook(received: list[dict[str, str]]) -> HTTPServer:
    """A local stand-in for the chat's webhook: keeps what is posted to it."""

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def main() -> None:
    received: list[dict[str, str]] = []
    server = _webhook(received)
    os.environ["ALERT_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_address[1]}/"
    worker = app.worker(concurrency=5)
    running = asyncio.create_task(worker.run(install_signal_handlers=False))
    run = await invoice.trigger("acme")
    try:
        await run.result(timeout=30)
    except perdure.errors.TaskFailed as exc:
        print(f"run failed: {exc}")
    for _ in range(500):  # the hook runs once the run's end is written
        if received:
            break
        await asyncio.sleep(0.01)
    print(f"alerts posted: {len(received)}")
    for alert_body in received:
        print(alert_body["text"])
    worker.stop()
    await running
    await app.close()
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
