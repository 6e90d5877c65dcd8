"""DASH: the dashboard and the stats API over a big history. The store is filled with 1,000,000
runs (20,000 with --quick) spread over 30 days, each run that started with a journal of 3 steps
— most completed, some failed, cancelled, queued, waiting and running, a tenth tagged — written
straight into the tables (the workload measures reads, not how fast runs are made), analysed as
autovacuum would, and then each page is asked for through the real ASGI application (HTTP in
process, no network noise): its median and slowest answer times over 15 requests after 2
warm-ups."""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

import perdure

Metric = dict[str, Any]

TASKS = [f"task_{i}" for i in range(10)]
STATUSES = [  # (status, share)
    ("completed", 0.94),
    ("failed", 0.04),
    ("cancelled", 0.01),
    ("queued", 0.005),
    ("waiting", 0.003),
    ("running", 0.002),
]
DAYS = 30
BATCH = 50_000
COLUMNS = (
    "id, app, task, queue, status, args_codec, args, created_at, started_at, updated_at, "
    "finished_at, available_at, tags"
)
ARGS = bytes([0x92, 0x90, 0x80])  # msgpack [[], {}]
STEPS = 3
"""Journal entries (steps) of each run that started."""
JOURNAL_COLUMNS = (
    "run_id, seq, kind, name, status, codec, value, raw_size, stored_size, started_at, finished_at"
)
STEP_VALUE = bytes([0xA2]) + b"ok"  # msgpack "ok"


def _steps(run: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The journal of a run as _rows makes them: STEPS steps over its span."""
    run_id, started, finished = run[0], run[8], run[10]
    if started is None:
        return []
    end = finished if finished is not None else started + 1.0
    width = (end - started) / STEPS
    return [
        (
            run_id,
            seq,
            "step",
            f"step_{seq}",
            "completed",
            "msgpack",
            STEP_VALUE,
            3,
            3,
            started + (seq - 1) * width,
            started + seq * width,
        )
        for seq in range(1, STEPS + 1)
    ]


def _rows(app: str, count: int, now: float) -> Iterator[list[tuple[Any, ...]]]:
    """The runs, oldest first, in batches; ids sort by creation as perdure's do."""
    rng = random.Random(20261130)
    statuses = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    start = now - DAYS * 86400
    step = DAYS * 86400 / count
    batch: list[tuple[Any, ...]] = []
    for i in range(count):
        created = start + i * step
        status = rng.choices(statuses, weights)[0]
        ended = status in ("completed", "failed", "cancelled")
        started = None if status == "queued" else created + rng.uniform(0.001, 0.5)
        took = rng.lognormvariate(0, 1.2)
        finished = (started or created) + took if ended else None
        tags = json.dumps([f"user:{i % 1000}"]) if i % 10 == 0 else None
        run_id = f"{int(created * 1000):012x}{i:020x}"
        batch.append(
            (
                run_id,
                app,
                TASKS[i % len(TASKS)],
                "default",
                status,
                "msgpack",
                ARGS,
                created,
                started,
                finished or created,
                finished,
                created if status in ("queued", "waiting") else None,
                tags,
            )
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _fill(database: str, app: str, count: int, now: float) -> None:
    if database.startswith("sqlite"):
        conn = sqlite3.connect(database.removeprefix("sqlite:///"))
        marks = ", ".join("?" * len(COLUMNS.split(",")))
        journal_marks = ", ".join("?" * len(JOURNAL_COLUMNS.split(",")))
        for batch in _rows(app, count, now):
            conn.executemany(f"INSERT INTO runs ({COLUMNS}) VALUES ({marks})", batch)
            conn.executemany(
                f"INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES ({journal_marks})",
                [step for run in batch for step in _steps(run)],
            )
            conn.commit()
        conn.execute("ANALYZE")
        conn.close()
        return
    import psycopg

    url = urlsplit(database)._replace(query="").geturl()
    with psycopg.connect(url, autocommit=True, options="-c search_path=perdure") as pg:
        cur = pg.cursor()
        for batch in _rows(app, count, now):
            with cur.copy(f"COPY runs ({COLUMNS}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
            with cur.copy(f"COPY journal ({JOURNAL_COLUMNS}) FROM STDIN") as copy:
                for row in batch:
                    for step in _steps(row):
                        copy.write_row(step)
        pg.execute("VACUUM ANALYZE runs")
        pg.execute("VACUUM ANALYZE journal")  # as autovacuum would: the visibility map is set


PAGES = [
    ("overview_24h", "/"),
    ("overview_7d", "/?window=7d"),
    ("runs", "/runs"),
    ("runs_failed", "/runs?status=failed"),
    ("runs_task", "/runs?task=task_3"),
    ("runs_tag", "/runs?tag=user%3A420"),
    ("runs_tag_absent", "/runs?tag=user%3A42"),
    ("runs_task_failed", "/runs?task=task_3&status=failed"),
    ("stats_api_24h", "/api/v1/stats?since=86400"),
    ("queues", "/queues"),
    ("tokens", "/tokens"),
    ("metrics", "/metrics"),
]


async def dashboard_at_scale(database: str, workdir: Path, quick: bool) -> list[Metric]:
    from perdure.server import create_app

    count = 20_000 if quick else 1_000_000
    app = perdure.App("bench", database=database, blobs=f"file://{workdir}/blobs")
    await app.store.open()
    _record, key = await app.admin.create_api_key(name="bench", scope="read")
    started = time.perf_counter()
    _fill(database, app.name, count, app.store.now())
    fill_seconds = time.perf_counter() - started
    out: list[Metric] = [
        {"workload": "DASH", "metric": "runs", "value": count},
        {"workload": "DASH", "metric": "fill_s", "value": fill_seconds},
    ]
    transport = httpx.ASGITransport(app=create_app(app, open_access=True))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dash", headers=headers
    ) as client:
        page = (await client.get("/runs")).text
        cursor = page.split('id="older"')[0].rsplit("cursor=", 1)[1].split('"')[0]
        for name, path in [*PAGES, ("runs_page_2", f"/runs?cursor={cursor}")]:
            times = []
            for attempt in range(17):
                began = time.perf_counter()
                response = await client.get(path)
                took = time.perf_counter() - began
                if response.status_code != 200:
                    raise RuntimeError(f"DASH: {path} answered {response.status_code}")
                if attempt >= 2:
                    times.append(took * 1000)
            times.sort()
            out.append(
                {"workload": "DASH", "metric": f"{name}_p50_ms", "value": statistics.median(times)}
            )
            out.append({"workload": "DASH", "metric": f"{name}_max_ms", "value": times[-1]})
        stats = (await client.get("/api/v1/stats?since=2592000")).json()
        counted = sum(sum(t["active"].values()) + sum(t["ended"].values()) for t in stats["tasks"])
        if counted < count * 0.99:  # (the oldest runs may have ended before the window)
            raise RuntimeError(f"DASH: the stats count {counted} runs of {count}")
    await app.close()
    return out
