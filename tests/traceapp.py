"""An app for trace tests with real processes: when $TRACE_FILE is set, the process exports
every span as it ends, as one JSON line appended to that file (the OpenTelemetry SDK's console
exporter writing to it: a worker killed later has exported every span it ended).

`steps` records step "first", then step "second", whose body waits while the file $TRACE_GATE
exists (a test kills the worker there). `parent` triggers `child` (a sync task, whose step runs
in a thread) and waits for it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import perdure

app = perdure.App("traced")


def export_spans_to(path: str) -> None:
    """Export this process's spans to `path`, one JSON line each, as each ends."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a")  # noqa: SIM115 - the process's for its life
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


if os.environ.get("TRACE_FILE"):
    export_spans_to(os.environ["TRACE_FILE"])


@app.step(name="first")
async def first(key: str) -> str:
    return f"{key}:1"


@app.step(name="second")
async def second(key: str) -> str:
    gate = os.environ.get("TRACE_GATE")  # (the first step's record is durable by now)
    if gate:
        Path(gate + ".reached").touch()  # noqa: ASYNC240 - a test's marker
        while os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 - a file another process removes
            await asyncio.sleep(0.01)
    return f"{key}:2"


@app.task(name="steps")
async def steps(key: str) -> list[str]:
    return [await first(key), await second(key)]


@app.step(name="double")
def double(n: int) -> int:
    return n * 2


@app.task(name="child")
def child(n: int) -> int:  # sync: its body and step run in a thread
    return double(n)


@app.task(name="parent")
async def parent(n: int) -> int:
    return await child.trigger_and_wait(n) + 1
