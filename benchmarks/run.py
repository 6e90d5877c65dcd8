"""perdure benchmarks: the workloads of PRODUCT.md, as JSON lines (one object per metric).

    scripts/bench [--quick] [--only W1,W2,W5] [--store sqlite|postgres|all] [--peer dbos]
                  [--out FILE] [--report]

W1 throughput (runs x 3 trivial steps, concurrency 50), W2 step overhead (one run of sequential
steps), W3 crash resume (kill -9 during step 3 of 5), W4 big values (3 steps of 8 MiB), W5
latency (one-step runs one after another, submit -> result).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRACING = os.environ.get("PERDURE_BENCH_TRACING", "")
"""Measure with OpenTelemetry `absent` (as if not installed), installed but `off` (no tracer
provider), or `on` (an SDK provider whose spans are made and dropped); unset: as the machine is."""
if TRACING == "absent":
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # its import now fails
elif TRACING == "on":
    from opentelemetry import trace as _trace
    from opentelemetry.sdk.trace import TracerProvider as _Provider

    _trace.set_tracer_provider(_Provider())  # spans made, ended, exported nowhere

import perdure  # noqa: E402
from perdure.records import RunStatus  # noqa: E402
from perdure.worker import Worker  # noqa: E402

Metric = dict[str, Any]


POSTGRES_URL = os.environ.get(
    "PERDURE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_database = ""  # the database of the workload being measured (see bench_database)


@contextlib.contextmanager
def bench_database(store: str, workdir: Path, name: str) -> Iterator[str]:
    """A fresh database for one workload: a SQLite file, or a PostgreSQL database dropped after."""
    global _database
    if store == "sqlite":
        _database = f"sqlite:///{workdir}/perdure.db"
        yield _database
        return
    import psycopg
    from psycopg import sql

    dbname = f"perdure_bench_{os.getpid()}_{name.lower()}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    _database = urlsplit(POSTGRES_URL)._replace(path=f"/{dbname}").geturl()
    try:
        yield _database
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


def new_app(workdir: Path) -> perdure.App:
    return perdure.App("bench", database=_database, blobs=f"file://{workdir}/blobs")


async def with_worker(
    app: perdure.App, concurrency: int, body: Callable[[], Awaitable[Metric]]
) -> Metric:
    await app.store.open()
    worker: Worker = app.worker(concurrency=concurrency)
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        return await body()
    finally:
        worker.stop()
        await task
        await app.close()


async def w1_throughput(workdir: Path, quick: bool, *, limited: bool = False) -> list[Metric]:
    runs = 200 if quick else 500
    app = new_app(workdir)
    if limited:
        app.queue("limited", concurrency=50)

    @app.step(name="noop")
    async def noop(i: int) -> int:
        return i

    @app.task(name="three", queue="limited" if limited else "default")
    async def three(i: int) -> int:
        return await noop(i) + await noop(i) + await noop(i)

    async def body() -> Metric:
        start = time.perf_counter()
        handles = await asyncio.gather(*(three.trigger(i) for i in range(runs)))
        for h in handles:
            await h.result(timeout=300)
        elapsed = time.perf_counter() - start
        return {"runs": runs, "seconds": elapsed}

    # limited: the worker has more slots than the queue allows, so the queue's limit decides
    out = await with_worker(app, 100 if limited else 50, body)
    name = "W1Q" if limited else "W1"
    return [
        {"workload": name, "metric": "runs_per_s", "value": out["runs"] / out["seconds"], **out}
    ]


async def w1_limited_queue(workdir: Path, quick: bool) -> list[Metric]:
    """W1 on a queue with a concurrency limit of 50 (the limit-aware claim path)."""
    return await w1_throughput(workdir, quick, limited=True)


async def fan_out(workdir: Path, quick: bool) -> list[Metric]:
    """A parent triggers 1,000 children in one batch and waits for all of them."""
    children = 1000
    app = new_app(workdir)

    @app.task(name="child")
    async def child(i: int) -> int:
        return i

    @app.task(name="parent")
    async def parent(n: int) -> int:
        results = await child.batch_trigger_and_wait([(i,) for i in range(n)])
        return sum(r for r in results if isinstance(r, int))

    async def body() -> Metric:
        start = time.perf_counter()
        total = await (await parent.trigger(children)).result(timeout=600)
        elapsed = time.perf_counter() - start
        if total != sum(range(children)):
            raise RuntimeError(f"fan-in returned {total}, expected {sum(range(children))}")
        return {"children": children, "seconds": elapsed}

    out = await with_worker(app, 50, body)
    return [{"workload": "FANOUT", "metric": "seconds", "value": out["seconds"], **out}]


async def w2_step_overhead(workdir: Path, quick: bool) -> list[Metric]:
    steps = 200
    app = new_app(workdir)

    @app.step(name="inc")
    async def inc(i: int) -> int:
        return i + 1

    @app.task(name="chain")
    async def chain() -> int:
        value = 0
        for _ in range(steps):
            value = await inc(value)
        return value

    async def body() -> Metric:
        handle = await chain.trigger()
        assert await handle.result(timeout=300) == steps
        run = await app.store.get_run(handle.id)
        assert run.started_at is not None
        assert run.finished_at is not None
        return {"steps": steps, "seconds": run.finished_at - run.started_at}

    out = await with_worker(app, 1, body)
    return [
        {
            "workload": "W2",
            "metric": "ms_per_step",
            "value": out["seconds"] * 1000 / steps,
            **out,
        }
    ]


W4_SIZE = 8 * 1024 * 1024


def file_floor(workdir: Path, reps: int, tag: str = "") -> float:
    """ms for the physical floor of one W4 step on a file: os.urandom(8 MiB) + one write and
    fsync of it, in the same folder (the median of `reps`)."""
    times = []
    for i in range(reps):
        start = time.perf_counter()
        data = os.urandom(W4_SIZE)
        with open(workdir / f"floor-{tag}{i}", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def s3_floor(blob_url: str, reps: int, tag: str = "") -> float:
    """ms for the floor of one W4 step on S3: os.urandom(8 MiB) + one obstore put of it to the
    same server (the median of `reps`)."""
    import obstore

    from perdure.blobs.object import ObjectBlobStore

    store = ObjectBlobStore(blob_url)._store
    times = []
    for i in range(reps):
        start = time.perf_counter()
        data = os.urandom(W4_SIZE)
        await obstore.put_async(store, f"floor/{tag}{i}", data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def w4_big_values(workdir: Path, quick: bool) -> list[Metric]:
    """3 steps each returning 8 MiB of random bytes; SQLite with the blob folder, PostgreSQL
    with S3 (a local moto_server), each beside its physical floor measured in the same run."""
    from perdure.testing import new_bucket, s3_test_server

    with contextlib.ExitStack() as stack:
        if _database.startswith("sqlite"):
            blob_url, target = f"file://{workdir}/blobs", "file"
        else:
            blob_url, target = new_bucket(stack.enter_context(s3_test_server())), "s3"
        app = perdure.App("bench", database=_database, blobs=blob_url)

        @app.step(name="big")
        async def big(i: int) -> bytes:
            return os.urandom(W4_SIZE)

        @app.task(name="bigs")
        async def bigs(steps: int) -> int:
            return sum([len(await big(i)) for i in range(steps)])

        steps, reps = 3, 3 if quick else 5

        async def body() -> Metric:
            # floor and workload in turns, so that both meet the same page cache and disk
            await (await bigs.trigger(1)).result(timeout=300)  # warm up
            floors, per_step = [], []
            for rep in range(reps):
                if target == "file":
                    floors.append(file_floor(workdir, 1, tag=str(rep)))
                else:
                    floors.append(await s3_floor(blob_url, 1, tag=str(rep)))
                start = time.perf_counter()
                handle = await bigs.trigger(steps)
                assert await handle.result(timeout=300) == steps * W4_SIZE
                per_step.append((time.perf_counter() - start) * 1000 / steps)
            return {
                "steps": steps * reps,
                "floor": statistics.median(floors),
                "per_step": statistics.median(per_step),
            }

        out = await with_worker(app, 1, body)
    floor, per_step = out["floor"], out["per_step"]
    return [
        {"workload": "W4", "metric": "floor_ms", "value": floor, "blobs": target},
        {
            "workload": "W4",
            "metric": "ms_per_step",
            "value": per_step,
            "x_floor": per_step / floor,
            "blobs": target,
            "steps": out["steps"],
        },
    ]


async def w5_latency(workdir: Path, quick: bool) -> list[Metric]:
    runs = 100
    app = new_app(workdir)

    @app.step(name="one")
    async def one(i: int) -> int:
        return i

    @app.task(name="single")
    async def single(i: int) -> int:
        return await one(i)

    async def body() -> Metric:
        latencies = []
        for i in range(runs + 5):
            start = time.perf_counter()
            handle = await single.trigger(i)
            await handle.result(timeout=60)
            if i >= 5:  # warm-up
                latencies.append((time.perf_counter() - start) * 1000)
        latencies.sort()
        return {
            "runs": runs,
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * len(latencies)) - 1],
        }

    out = await with_worker(app, 10, body)
    return [
        {"workload": "W5", "metric": "p50_ms", "value": out["p50"]},
        {"workload": "W5", "metric": "p95_ms", "value": out["p95"]},
    ]


async def wait_for_line(path: Path, prefix: str, timeout: float = 60.0) -> None:
    """Poll a side-effect log until a line starts with `prefix`."""
    deadline = time.monotonic() + timeout
    while not has_line(path, prefix):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no line {prefix!r} in {path} within {timeout}s")
        await asyncio.sleep(0.005)


def has_line(path: Path, prefix: str) -> bool:
    """True once a line of `path` starts with `prefix`."""
    return path.exists() and f"\n{prefix}" in "\n" + path.read_text()


async def w3_crash_resume(workdir: Path, quick: bool) -> list[Metric]:
    """Kill -9 during step 3 of 5 (crash-test app), restart, count re-executed steps."""
    log, gate = workdir / "side-effects.log", workdir / "gate"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": _database,
        "PERDURE_BLOB_URL": f"file://{workdir}/blobs",
        "CRASH_LOG": str(log),
        "CRASH_GATE": str(gate),
        "CRASH_GATE_STEP": "3",
    }
    from tests import crashapp

    app = new_app(workdir)
    app.name = "crash"
    app.task(name="pipeline")(crashapp.pipeline.fn)
    cmd = [sys.executable, "-m", "perdure", "worker", "tests.crashapp:app"]
    gate.touch()
    first = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    handle = await app.get_task("pipeline").trigger("w3", 5)
    await wait_for_line(log, "start w3 3")
    first.kill()
    await first.wait()
    gate.unlink()
    restarted = time.perf_counter()
    second = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    await handle.result(timeout=60)
    seconds = time.perf_counter() - restarted
    second.send_signal(signal.SIGTERM)
    await second.wait()
    starts = [line.split()[2] for line in log.read_text().splitlines() if line.startswith("start")]
    reexecuted = sum(starts.count(str(i)) - 1 for i in (1, 2))
    await app.close()
    return [
        {"workload": "W3", "metric": "completed_steps_reexecuted", "value": reexecuted},
        {"workload": "W3", "metric": "restart_to_completion_s", "value": seconds},
    ]


async def commit_floor(workdir: Path, quick: bool) -> list[Metric]:
    """The cost of one durable commit of one small row on this store (SQLite: WAL,
    synchronous=FULL; PostgreSQL: synchronous_commit as configured): the floor under W2 and W5,
    measured in the same run so ratios can be read. Also the same commit of one row shaped like
    a step's journal row (its 16 columns and two-part key), with the run's lease read first in
    the same transaction, as perdure does: the database's own share of a step."""
    if _database.startswith("postgresql"):
        return postgres_floor()
    conn = sqlite3.connect(workdir / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB) WITHOUT ROWID")
    conn.execute(f"CREATE TABLE journal ({JOURNAL_COLUMNS}) WITHOUT ROWID")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, lease INTEGER) WITHOUT ROWID")
    conn.execute("INSERT INTO runs VALUES (?, 1)", (RUN_ID,))
    floor, journal = [], []
    for i in range(300):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 64))
        conn.execute("COMMIT")
        middle = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT lease FROM runs WHERE id = ?", (RUN_ID,)).fetchone()
        conn.execute(f"INSERT INTO journal VALUES ({', '.join('?' * 16)})", journal_row(i))
        conn.execute("COMMIT")
        floor.append((middle - start) * 1000)
        journal.append((time.perf_counter() - middle) * 1000)
    conn.close()
    return floor_metrics(floor, journal)


RUN_ID = "01a213d919013c129685102d36fbf7ca"
JOURNAL_COLUMNS = (
    "run_id TEXT, seq INTEGER, kind TEXT, name TEXT, status TEXT, codec TEXT, value BYTEA, "
    "blob_key TEXT, raw_size BIGINT, stored_size BIGINT, error BYTEA, started_at FLOAT8, "
    "finished_at FLOAT8, run_attempt INTEGER, attempt INTEGER, attempt_started_at FLOAT8, "
    "PRIMARY KEY (run_id, seq)"
)


def journal_row(seq: int) -> tuple[Any, ...]:
    """A journal row as a trivial step writes it."""
    now = time.time()
    key, what, sizes, attempts = (RUN_ID, seq), ("step", "inc", "ok"), (1, 1), (1, 1)
    return (*key, *what, "msgpack", b"\x01", None, *sizes, None, now, now, *attempts, now)


def floor_metrics(floor: list[float], journal: list[float]) -> list[Metric]:
    return [
        {"workload": "floor", "metric": "commit_ms", "value": statistics.median(floor)},
        {"workload": "floor", "metric": "journal_commit_ms", "value": statistics.median(journal)},
    ]


def postgres_floor() -> list[Metric]:
    import psycopg

    floor, journal = [], []
    with psycopg.connect(_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor (k integer PRIMARY KEY, v bytea)")
        conn.execute(f"CREATE TABLE journal ({JOURNAL_COLUMNS})")
        conn.execute("CREATE TABLE runs (id text PRIMARY KEY, lease integer)")
        conn.execute("INSERT INTO runs VALUES (%s, 1)", (RUN_ID,))
        insert = (
            "INSERT INTO journal SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s FROM runs WHERE id = %s AND lease = 1 FOR SHARE"  # as perdure fences it
        )
        for i in range(300):
            start = time.perf_counter()
            conn.execute("INSERT INTO floor VALUES (%s, %s)", (i, b"x" * 64))
            middle = time.perf_counter()
            conn.execute(insert, (*journal_row(i), RUN_ID))
            floor.append((middle - start) * 1000)
            journal.append((time.perf_counter() - middle) * 1000)
    return floor_metrics(floor, journal)


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    return process_rss_mb(os.getpid())


async def sleep_10k(workdir: Path, quick: bool) -> list[Metric]:
    """10,000 runs (1,000 with --quick) that each sleep durably until one shared moment: the
    process's memory while they all sleep (worker and triggering code in one process), and how
    late each one wakes (its first instruction after the sleep, minus the shared moment)."""
    runs = 1000 if quick else 10_000
    app = new_app(workdir)

    @app.task(name="nap")
    async def nap(wake_at: float) -> float:
        await perdure.sleep(wake_at - time.time())  # the wake-up time is recorded
        return time.time()

    async def body() -> Metric:
        baseline = rss_mb()
        started = time.perf_counter()
        wake_at = time.time() + (10.0 if quick else 30.0)
        handles = []
        for chunk in range(0, runs, 1000):
            handles += await nap.batch_trigger([(wake_at,)] * min(1000, runs - chunk))

        asleep = 0
        # every run has started and suspended; or the moment came first (a slow start: runs
        # that woke and finished would never be counted asleep, and the loop never ended)
        while asleep < runs and time.time() < wake_at:
            await asyncio.sleep(0.1)
            asleep = len(await app.store.list_runs(status=RunStatus.WAITING, limit=runs))
        start_seconds = time.perf_counter() - started
        sleeping_rss = rss_mb()
        late = time.time() > wake_at  # (then the lags include the start)
        lags = sorted([await h.result(timeout=600) - wake_at for h in handles])
        return {
            "runs": runs,
            "start_s": start_seconds,
            "rss_mb": sleeping_rss,
            "rss_added_mb": sleeping_rss - baseline,
            "lag_p50": statistics.median(lags),
            "lag_p95": lags[int(0.95 * len(lags)) - 1],
            "started_late": late,
        }

    out = await with_worker(app, 50, body)
    return [
        {"workload": "SLEEP10K", "metric": "rss_mb", "value": out["rss_mb"], **out},
        {"workload": "SLEEP10K", "metric": "wake_lag_p50_s", "value": out["lag_p50"]},
        {"workload": "SLEEP10K", "metric": "wake_lag_p95_s", "value": out["lag_p95"]},
        {"workload": "SLEEP10K", "metric": "start_s", "value": out["start_s"]},
    ]


def process_rss_mb(pid: int, *, peak: bool = False) -> float:
    """Resident memory of process `pid` now (`peak`: the most it has held), in MB (Linux)."""
    field = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_tokens(workdir: Path, quick: bool) -> list[Metric]:
    """10,000 runs (1,000 with --quick) that each wait for their token, run by a worker process
    (benchmarks/waitapp.py, concurrency 50): the worker's memory while they all wait against
    the same worker idle, the latency from a token's completion (in this process) to its run's
    first instruction after the wait, with the worker otherwise idle (200 completions one after
    another), and the time to complete all the others at once."""
    runs = 1000 if quick else 10_000
    samples = 200
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": _database,
        "PERDURE_BLOB_URL": f"file://{workdir}/blobs",
    }
    app = new_app(workdir)

    @app.task(name="hold")
    async def hold() -> float:  # (the worker process runs benchmarks/waitapp.py's)
        raise AssertionError("run by the worker process")

    await app.store.open()
    cmd = [sys.executable, "-m", "perdure", "worker", "benchmarks.waitapp:app"]
    worker = await asyncio.create_subprocess_exec(
        *cmd, "--concurrency", "50", env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        while not await app.store.live_workers(app="bench"):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        idle = process_rss_mb(worker.pid)
        started = time.perf_counter()
        handles = []
        for chunk in range(0, runs, 1000):
            handles += await hold.batch_trigger([()] * min(1000, runs - chunk))
        waiting = 0
        while waiting < runs:  # every run has started, registered its wait and suspended
            await asyncio.sleep(0.2)
            waiting = len(await app.store.list_runs(status=RunStatus.WAITING, limit=runs))
        start_seconds = time.perf_counter() - started
        await asyncio.sleep(1.0)
        waiting_rss = process_rss_mb(worker.pid)
        lags = []
        for handle in handles[:samples]:  # one at a time: the worker is otherwise idle
            sent = time.time()
            await handle.complete_token("go")
            lags.append(await handle.result(timeout=60) - sent)
        lags.sort()
        rest = handles[samples:]
        all_started = time.perf_counter()
        for chunk in range(0, len(rest), 500):
            await asyncio.gather(*(h.complete_token("go") for h in rest[chunk : chunk + 500]))
        for handle in rest:
            await handle.result(timeout=600)
        complete_all = time.perf_counter() - all_started
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
        await app.close()
    out = {
        "runs": runs,
        "idle_rss_mb": idle,
        "rss_mb": waiting_rss,
        "start_s": start_seconds,
    }
    return [
        {"workload": "WAIT", "metric": "worker_rss_added_mb", "value": waiting_rss - idle, **out},
        {"workload": "WAIT", "metric": "resume_p50_ms", "value": statistics.median(lags) * 1000},
        {
            "workload": "WAIT",
            "metric": "resume_p95_ms",
            "value": lags[int(0.95 * len(lags)) - 1] * 1000,
        },
        {"workload": "WAIT", "metric": "complete_all_s", "value": complete_all},
        {"workload": "WAIT", "metric": "start_s", "value": start_seconds},
    ]


async def long_loop(workdir: Path, quick: bool) -> list[Metric]:
    """A looping agent (benchmarks/loopapp.py: a step per turn) of 10 turns, of 10,000 turns
    (1,000 with --quick), and of as many continuing as a new run every 100 turns: each runs
    until it waits for an event at its end, in a worker process; then a fresh worker process
    resumes it. Measured: the resume, from the event sent to the result (the replay of the
    journal of the run that waits), and the resuming worker's peak memory over its idle
    memory."""
    turns = 1000 if quick else 10_000
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": _database,
        "PERDURE_BLOB_URL": f"file://{workdir}/blobs",
    }
    app = new_app(workdir)

    @app.task(name="agent")
    async def agent(key: str, done: int, turns: int, every: int) -> int:
        raise AssertionError("run by the worker processes")

    async def worker() -> asyncio.subprocess.Process:
        cmd = [sys.executable, "-m", "perdure", "worker", "benchmarks.loopapp:app"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL
        )
        while not any(w.pid == proc.pid for w in await app.store.live_workers(app="bench")):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        return proc

    async def stop(proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()

    async def last_run(run_id: str) -> perdure.records.RunRecord:
        run = await app.store.get_run(run_id, values=False)
        while run.continued_as:
            run = await app.store.get_run(run.continued_as, values=False)
        return run

    await app.store.open()
    metrics: list[Metric] = []
    try:
        for label, total, every in (
            ("10", 10, 0),
            (str(turns), turns, 0),
            (f"{turns}_can100", turns, 100),
        ):
            first = await worker()
            handle = await agent.trigger(label, 0, total, every)
            while (await last_run(handle.id)).status is not RunStatus.WAITING:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            waiting = await last_run(handle.id)
            history = len(await app.store.load_journal(waiting.id, values=False))
            await stop(first)
            second = await worker()
            await asyncio.sleep(1.0)
            idle = process_rss_mb(second.pid)
            sent = time.perf_counter()
            await app.send_event("bench.resume", {"key": label})
            assert await handle.result(timeout=600) == total
            resume = time.perf_counter() - sent
            peak = process_rss_mb(second.pid, peak=True)
            await stop(second)
            out = {"turns": total, "continue_every": every, "journal_entries": history}
            metrics += [
                {"workload": "LOOP", "metric": f"resume_ms_{label}", "value": resume * 1000, **out},
                {
                    "workload": "LOOP",
                    "metric": f"resume_peak_added_mb_{label}",
                    "value": peak - idle,
                },
            ]
    finally:
        await app.close()
    return metrics


async def hybrid_workers(workdir: Path, quick: bool) -> list[Metric]:
    # these three import httpx and the like here, not in every workload's process: a heap
    # grown by modules a workload does not use makes each of its full collections slower
    from benchmarks import hybrid

    return await hybrid.hybrid_workers(_database, workdir, quick)


async def scale_out(workdir: Path, quick: bool) -> list[Metric]:
    from benchmarks import scale

    return await scale.scale(_database, workdir, quick)


async def dashboard(workdir: Path, quick: bool) -> list[Metric]:
    from benchmarks import dash

    return await dash.dashboard_at_scale(_database, workdir, quick)


WORKLOADS: dict[str, Callable[[Path, bool], Coroutine[Any, Any, list[Metric]]]] = {
    "FLOOR": commit_floor,
    "W1": w1_throughput,
    "W2": w2_step_overhead,
    "W3": w3_crash_resume,
    "W4": w4_big_values,
    "W5": w5_latency,
    "W1Q": w1_limited_queue,
    "FANOUT": fan_out,
    "SLEEP10K": sleep_10k,
    "WAIT": wait_tokens,
    "LOOP": long_loop,
    "HYBRID": hybrid_workers,
    "SCALE": scale_out,
    "DASH": dashboard,
}


def machine() -> Metric:
    return {
        "python": platform.python_version(),
        "perdure": perdure.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


PEERS = {"dbos": ("dbos==3.4.0", "psycopg[binary]>=3.2")}
"""Reference peers and what their virtualenv gets (pinned)."""
PEER_WORKLOADS = {"W1", "W2", "W3", "W4", "W5", "FANOUT", "SLEEP10K", "WAIT"}


def peer_python(peer: str) -> Path:
    """The peer's own virtualenv under benchmarks/peers/PEER/.venv, created on first use."""
    venv = ROOT / "benchmarks" / "peers" / peer / ".venv"
    stamp = venv / ".installed"
    wanted = "\n".join(PEERS[peer])
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {' '.join(PEERS[peer])} into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PEERS[peer]],
            capture_output=True,
            text=True,
        )
        # (as scripts/_venv: pip's notes about configured package folders absent here)
        said = [line for line in done.stderr.splitlines() if "WARNING: Location" not in line]
        if said:
            print("\n".join(said), file=sys.stderr)
        done.check_returncode()
        stamp.write_text(wanted)
    return venv / "bin" / "python"


def run_peer(peer: str, workload: str, url: str, workdir: Path, quick: bool) -> list[Metric]:
    """One workload on the peer, in a fresh process and database."""
    script = ROOT / "benchmarks" / "peers" / peer / f"run_{peer}.py"
    cmd = [str(peer_python(peer)), str(script), "--workload", workload, "--database", url]
    done = subprocess.run(
        [*cmd, *(["--quick"] if quick else [])],
        env={**os.environ, "W3_DIR": str(workdir)},
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    metrics = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not metrics:
        raise RuntimeError(f"{peer} {workload} failed:\n{done.stderr[-3000:]}")
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma-separated workloads (FLOOR, W1..W5, W1Q, FANOUT, SLEEP10K, WAIT, LOOP, HYBRID, "
        "SCALE, DASH)",
    )
    parser.add_argument(
        "--store",
        default="sqlite",
        choices=["sqlite", "postgres", "all"],
        help="store to measure (postgres: $PERDURE_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument(
        "--peer",
        choices=sorted(PEERS),
        help="also run the workloads on this reference peer (its own pinned virtualenv)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="write docs/benchmarks.md's figures and docs/benchmarks.png from this run",
    )
    args = parser.parse_args()
    selected = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in selected if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    facts = machine()
    results: list[Metric] = []
    stores = ["sqlite", "postgres"] if args.store == "all" else [args.store]
    progress = Progress(
        sum(1 + bool(args.peer and name in PEER_WORKLOADS) for name in selected) * len(stores)
    )
    for store in stores:
        for name in selected:
            with (
                progress.step(f"{store} {name}"),
                tempfile.TemporaryDirectory(prefix=f"perdure-bench-{name}-") as tmp,
                bench_database(store, Path(tmp), name),
            ):
                metrics = asyncio.run(WORKLOADS[name](Path(tmp), args.quick))
            for metric in metrics:
                metric["store"] = store
                emit(metric, args, facts, results)
            if args.peer and name in PEER_WORKLOADS:  # right after ours, on the same store
                with (
                    progress.step(f"{store} {name} on {args.peer}"),
                    tempfile.TemporaryDirectory(prefix=f"{args.peer}-bench-{name}-") as tmp,
                    bench_database(store, Path(tmp), f"{args.peer}_{name}") as url,
                ):
                    for metric in run_peer(args.peer, name, url, Path(tmp), args.quick):
                        metric["store"] = store
                        emit(metric, args, facts, results)
    summarise(results)
    if args.report:
        from benchmarks.report import write_report

        write_report(results, facts, quick=args.quick)
    return 0


class Progress:
    """One line on stderr per workload measured (with a spinner on a terminal): a full run
    beside the peer takes a quarter of an hour."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total
        self.done = 0

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        label = f"[{self.done}/{self.total}] {what}"
        started = time.perf_counter()
        with self.console.status(f"{label} ..."):
            yield
        self.console.print(f"{label}: {time.perf_counter() - started:.1f} s", highlight=False)


def emit(metric: Metric, args: argparse.Namespace, facts: Metric, results: list[Metric]) -> None:
    """Print one metric as a JSON line (and append it to --out)."""
    line = json.dumps({**metric, "quick": args.quick, "date": time.time(), **facts})
    print(line, flush=True)
    results.append(metric)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


def summarise(results: list[Metric]) -> None:
    """A table for people, on stderr (stdout stays JSON lines): perdure, the peer, and how many
    times better perdure is."""
    from rich.console import Console
    from rich.table import Table

    from benchmarks.report import compare

    table = Table("store", "workload", "metric", "perdure", "peer", "x better", title="benchmarks")
    for row in compare(results):
        table.add_row(*row)
    Console(stderr=True).print(table)


if __name__ == "__main__":
    raise SystemExit(main())
