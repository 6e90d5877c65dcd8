"""The Redis tier (perdure.store.redis_tier) on PostgreSQL, against a private redis-server each
test starts, kills and flushes: wake-ups go through Redis (no LISTEN session), a frozen worker
whose TCP connections stay open is taken over through its expired presence, and losing Redis
(killed, flushed) loses nothing."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

import perdure
from perdure.records import RunStatus
from perdure.store.redis_tier import CHANNEL

from . import crashapp
from .conftest import WorkerProcess, running_worker, wait_until
from .served import SECRETS, ServerProcess, free_port, healthy


class RedisServer:
    """A redis-server of this test's own on a free port (no persistence: a restart is empty)."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed (apt-get install redis-server)")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.command("PING") != b"+PONG\r\n":
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def command(self, *words: str) -> bytes:
        """One command over a plain socket (the answer's first bytes; b'' if unreachable)."""
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(" ".join(words).encode() + b"\r\n")
                return sock.recv(65536)
        except OSError:
            return b""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _listening(database_url: str) -> int:
    """Sessions of the test's database that run LISTEN."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_wakeups_go_through_redis_and_no_session_listens(
    postgres_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A trigger's wake-up is published on the Redis channel and reaches the worker, which
    keeps no LISTEN session (what PgBouncer in transaction mode cannot give)."""
    import redis.asyncio

    app = perdure.App(
        "tier", database=postgres_url, blobs=f"file://{tmp_path}/blobs", redis=redis_server.url
    )

    @app.task
    async def hello(name: str) -> str:
        return f"hello {name}"

    client = redis.asyncio.Redis.from_url(redis_server.url)
    pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    try:
        async with running_worker(app):
            await wait_until(lambda: _presences(redis_server) == 1)
            handle = await hello.trigger("redis")
            assert await handle.result(timeout=30) == "hello redis"
            assert _listening(postgres_url) == 0
            published: set[str] = set()
            deadline = time.monotonic() + 10
            while f"run:{handle.id}" not in published and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    published.update(msgspec.msgpack.decode(message["data"], type=list[str]))
            assert {"claimable", f"run:{handle.id}"} <= published
        assert _presences(redis_server) == 0  # a worker that stopped leaves
    finally:
        await pubsub.aclose()
        await client.aclose()


def _presences(redis_server: RedisServer) -> int:
    """Workers with a presence key."""
    answer = redis_server.command("KEYS", "perdure:*:alive:*")
    return int(answer.split(b"\r\n")[0][1:]) if answer.startswith(b"*") else 0


@dataclass
class Load:
    """Worker processes of tests/crashapp.py on PostgreSQL with the Redis tier."""

    app: perdure.App
    tmp: Path
    env: dict[str, str]
    procs: list[WorkerProcess]

    @property
    def log(self) -> Path:
        return self.tmp / "side-effects.log"

    def worker(self, **env: str) -> WorkerProcess:
        proc = WorkerProcess(
            "tests.crashapp:app",
            {**self.env, **env},
            log=self.tmp / f"worker-{len(self.procs)}.log",
        )
        self.procs.append(proc)
        return proc

    async def check(self, handles: list[Any], prefix: str) -> None:
        """Every run completed once, and no recorded step started again after it was
        recorded."""
        store = self.app.store
        for i, handle in enumerate(handles):
            assert await handle.result(timeout=120) == [f"{prefix}{i}:{n}" for n in (1, 2, 3)]
        for i, handle in enumerate(handles):
            assert (await store.get_run(handle.id)).status is RunStatus.COMPLETED
            for entry in await store.load_journal(handle.id):
                assert entry.finished_at is not None
                starts = [
                    float(r[3])
                    for r in crashapp.records(self.log)
                    if r[:3] == ["start", f"{prefix}{i}", str(entry.seq)]
                ]
                assert starts, (handle.id, entry)
                assert all(t < entry.finished_at for t in starts), (handle.id, entry)


@pytest.fixture
async def load(
    postgres_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    worker_processes: list[WorkerProcess],
) -> AsyncIterator[Load]:
    blobs = f"file://{tmp_path}/blobs"
    app = perdure.App("crash", database=postgres_url, blobs=blobs, redis=redis_server.url)
    app.task(name="pipeline")(crashapp.pipeline.fn)
    env = {
        "PERDURE_DATABASE_URL": postgres_url,
        "PERDURE_BLOB_URL": blobs,
        "PERDURE_REDIS_URL": redis_server.url,
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
        "CRASH_GATE": str(tmp_path / "gate"),
    }
    try:
        yield Load(app, tmp_path, env, worker_processes)
    finally:
        await app.close()


async def test_a_frozen_worker_is_taken_over_once_its_presence_expires(
    load: Load, redis_server: RedisServer
) -> None:
    """SIGSTOP a worker in step 2 of 3: its database sessions stay open (as when a host's
    packets stop and its TCP connections linger), its heartbeats would take 90 s to go stale,
    yet its presence in Redis expires and another worker takes the run over; step 1 is not run
    again. Resumed, the frozen worker finds it was declared dead and stops."""
    (load.tmp / "gate").touch()
    victim = load.worker(CRASH_GATE_STEP="2")
    handle = await load.app.get_task("pipeline").trigger("f", 3)
    await wait_until(lambda: crashapp.starts(load.log, "f", 2) == 1, timeout=30)
    survivor = load.worker(PERDURE_PID_CHECK="0")
    survivor.wait_started()
    await asyncio.sleep(0.5)  # the survivor's first presence beats
    os.kill(victim.pid, signal.SIGSTOP)
    (load.tmp / "gate").unlink()
    try:
        assert await handle.result(timeout=30) == ["f:1", "f:2", "f:3"]  # 90 s without Redis
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    assert crashapp.starts(load.log, "f", 1) == 1
    assert crashapp.starts(load.log, "f", 2) == 2
    assert "gone (no presence in Redis for 1.2s); requeued 1 run(s)" in survivor.log.read_text()
    assert victim.proc.wait(30) != 0  # declared dead: it stops, saying so
    assert "was declared dead" in victim.log.read_text()
    assert survivor.proc.poll() is None


async def test_redis_killed_mid_load_every_run_completes(
    load: Load, redis_server: RedisServer
) -> None:
    """Redis is killed while two workers are in the middle of 60 runs, and comes back empty a
    few seconds later: every run completes, no recorded step runs again, and no worker is
    taken for dead (an outage expires every presence: none counts until all could beat)."""
    workers = [load.worker(), load.worker()]
    for proc in workers:
        proc.wait_started()
    task = load.app.get_task("pipeline")
    handles = [await task.trigger(f"k{i}", 3, 0.2) for i in range(60)]
    await wait_until(lambda: len(crashapp.records(load.log)) >= 30, timeout=60)
    redis_server.kill()
    done_before = len(crashapp.records(load.log))
    await asyncio.sleep(3 * 1.2)  # three presence TTLs: every presence expires
    assert len(crashapp.records(load.log)) > done_before  # the work went on without Redis
    redis_server.start()
    await load.check(handles, "k")
    assert all(proc.proc.poll() is None for proc in workers)
    for proc in workers:
        text = proc.log.read_text()
        assert "is unreachable" in text
        assert "is reachable again" in text
        assert "gone (no presence" not in text
    assert len(await load.app.store.live_workers(app="crash")) == 2
    await wait_until(lambda: _presences(redis_server) == 2, timeout=10)  # both entered again


async def test_redis_flushed_mid_load_loses_nothing(load: Load, redis_server: RedisServer) -> None:
    """FLUSHALL while two workers are in the middle of 40 runs: every presence and tombstone is
    gone; the workers confirm with PostgreSQL that they are alive and enter again, every run
    completes, and no recorded step runs again."""
    workers = [load.worker(), load.worker()]
    for proc in workers:
        proc.wait_started()
    await wait_until(lambda: _presences(redis_server) == 2, timeout=10)
    task = load.app.get_task("pipeline")
    handles = [await task.trigger(f"x{i}", 3, 0.1) for i in range(40)]
    await wait_until(lambda: len(crashapp.records(load.log)) >= 30, timeout=60)
    assert redis_server.command("FLUSHALL") == b"+OK\r\n"
    await load.check(handles, "x")
    assert all(proc.proc.poll() is None for proc in workers)
    for proc in workers:
        assert "gone (no presence" not in proc.log.read_text()
    assert len(await load.app.store.live_workers(app="crash")) == 2
    await wait_until(lambda: _presences(redis_server) == 2, timeout=10)


async def test_sse_streams_fan_out_across_server_replicas_through_redis(
    postgres_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    worker_processes: list[WorkerProcess],
) -> None:
    """Two server replicas and a worker process share PostgreSQL and Redis, and none of them
    holds a LISTEN session: a run triggered through replica A streams from the worker, and a
    client following it on replica B gets each chunk as it is written (without the fan-out,
    each would wait for B's 15 s keepalive, past this test's bounds)."""
    env = {
        "PERDURE_DATABASE_URL": postgres_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "PERDURE_REDIS_URL": redis_server.url,
        **SECRETS,
    }
    app = perdure.App("waits", database=postgres_url, blobs=env["PERDURE_BLOB_URL"])
    _record, key = await app.admin.create_api_key(name="both", scope="trigger")
    worker_processes.append(WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w.log"))
    servers, urls = [], []
    for name in ("a", "b"):
        port = free_port()
        log = tmp_path / f"server-{name}.log"
        servers.append(ServerProcess("tests.waitapp:app", env, port=port, log=log))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            await wait_until(functools.partial(healthy, url), timeout=30)
        a = perdure.Client(urls[0], api_key=key)
        b = perdure.Client(urls[1], api_key=key)
        async with a, b:
            run = await a.trigger("narrate", ["durable", "runs"])
            seen: list[tuple[str, Any]] = []

            async def follow() -> None:
                async for kind, data in b.run(run.id).events():
                    seen.append((kind, data))

            following = asyncio.create_task(follow())
            await wait_until(lambda: _words(seen) == ["durable", "runs"], timeout=10)
            await wait_until(lambda: _status(a, run.id, "waiting"), timeout=10)
            await a.run(run.id).complete_token("more")
            await asyncio.wait_for(following, 10)
            assert _words(seen) == ["durable", "runs", "end"]
            assert [d["status"] for k, d in seen if k == "status"][-1] == "completed"
        assert _listening(postgres_url) == 0
    finally:
        for server in servers:
            server.stop()
        await app.close()


async def _status(client: perdure.Client, run_id: str, status: str) -> bool:
    return await client.run(run_id).status() == status


def _words(seen: list[tuple[str, Any]]) -> list[Any]:
    return [data["data"] for kind, data in seen if kind == "chunk"]
