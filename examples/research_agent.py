"""A research agent: plan, search (flaky: rate-limited twice), read sources in parallel, wait
for a rate-limit window with a durable sleep, summarise, write the report.

Every step appends to the timeline file $PERDURE_DEMO_TIMELINE (when set), so the demo can show
which process ran what. Run it with:

    perdure worker examples.research_agent:app
    perdure trigger examples.research_agent:app research '["durable execution"]' --wait
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass

import perdure

app = perdure.App("research")

_failures_left = {"search": 2}  # per process: the search API rate-limits us twice


def timeline(event: str, **fields: object) -> None:
    """Append one event to the demo's timeline file (no-op without $PERDURE_DEMO_TIMELINE)."""
    path = os.environ.get("PERDURE_DEMO_TIMELINE")
    if not path:
        return
    record = {"t": time.time(), "pid": os.getpid(), "event": event, **fields}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class Source:
    url: str
    title: str


@app.step
async def plan(topic: str) -> list[str]:
    timeline("step", name="plan")
    await asyncio.sleep(0.3)  # an LLM call
    return [f"what is {topic}", f"{topic} failure modes", f"{topic} in production"]


@app.step(retry=perdure.Retry(max_attempts=5, min_timeout=0.2, max_timeout=1.0))
async def search(queries: list[str]) -> list[Source]:
    timeline("step", name="search")
    await asyncio.sleep(0.2)
    if _failures_left["search"] > 0:
        _failures_left["search"] -= 1
        timeline("error", name="search", error="429 Too Many Requests")
        raise ConnectionError("search API: 429 Too Many Requests")
    return [Source(url=f"https://example.org/{i}", title=q) for i, q in enumerate(queries)]


@app.step
async def read(source: Source) -> str:
    timeline("step", name=f"read {source.url.rsplit('/', 1)[1]}")
    await asyncio.sleep(0.4)
    return f"notes on {source.title}"


@app.step
async def summarise(notes: list[str]) -> str:
    timeline("step", name="summarise")
    await asyncio.sleep(2.0)  # a long LLM call: the demo kills the worker in here
    return " / ".join(notes)


@app.step
async def write_report(topic: str, summary: str) -> str:
    timeline("step", name="write_report")
    await asyncio.sleep(0.2)
    return f"# {topic}\n\n{summary}\n"


@app.step
async def announce_wait(seconds: float) -> None:
    timeline("sleep", name="rate-limit window", seconds=seconds)


@app.task
async def research(topic: str) -> dict[str, str]:
    queries = await plan(topic)
    sources = await search(queries)
    notes = await asyncio.gather(*(read(s) for s in sources))
    await announce_wait(3)  # a step, so the timeline shows it once however often we replay
    await perdure.sleep(3)  # durable: the run leaves the worker while it waits
    summary = await summarise(list(notes))
    report = await write_report(topic, summary)
    return {"topic": topic, "report": report, "finished": perdure.now().isoformat()}
