"""SCALE (PostgreSQL): many worker processes on one database, with and without the Redis tier.

- 8 worker processes (concurrency 10 each) idle, then running W1 (500 runs of three trivial
  steps, triggered at once): PostgreSQL transactions per second while idle, per run of W1, and
  W1's runs/s. (pg_stat_statements is not loaded on the test machines; a statement outside a
  transaction counts as one transaction, and a write's statements as one.)
- Takeover after a host's death: a worker holding a run stops answering while its TCP
  connections stay open. Its host is simulated by a network namespace with its own veth pair
  (the database through a TCP relay, Redis on the veth's address), whose link is set down: its
  packets are dropped, and the database still sees its sessions. Where namespaces cannot be
  made (not root, no `ip`), the worker is stopped with SIGSTOP instead. Timed from the drop to
  the held step starting again on the other worker; both workers beat every 5 s
  (PERDURE_HEARTBEAT_INTERVAL), so without Redis the takeover waits for 3 missed heartbeats
  (15 s here; 90 s with the default 30 s).

A private redis-server on a free port serves the Redis runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

import perdure

Metric = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
SPEC = "benchmarks.scaleapp:app"
NAMESPACE = "perdure-bench-host"
HOST_SIDE, HOST_IP = "pdbench0", "10.203.77.1"
NS_SIDE, NS_IP = "pdbench1", "10.203.77.2"
HEARTBEAT = 5.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _namespace() -> Iterator[bool]:
    """A network namespace joined to this one by a veth pair (HOST_IP here, NS_IP there);
    False (and nothing made) where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield False
        return
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", NAMESPACE)  # left by an interrupted run
    try:
        _ip("netns", "add", NAMESPACE)
        _ip("link", "add", HOST_SIDE, "type", "veth", "peer", "name", NS_SIDE)
        _ip("link", "set", NS_SIDE, "netns", NAMESPACE)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", HOST_SIDE)
        _ip("link", "set", HOST_SIDE, "up")
        inside = ["netns", "exec", NAMESPACE, "ip"]
        _ip(*inside, "addr", "add", f"{NS_IP}/24", "dev", NS_SIDE)
        _ip(*inside, "link", "set", NS_SIDE, "up")
        _ip(*inside, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", NAMESPACE)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", HOST_SIDE)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", NAMESPACE)


@contextlib.contextmanager
def _redis(binds: list[str]) -> Iterator[int]:
    """A private redis-server listening on `binds`; its port."""
    port = _port()
    args = ["redis-server", "--port", str(port), "--bind", *binds]
    proc = subprocess.Popen(
        [*args, "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait()


async def _relay(host: str, target_port: int) -> tuple[asyncio.Server, set[asyncio.Task[Any]]]:
    """A TCP relay on `host` (a free port) to 127.0.0.1:`target_port`."""
    tasks: set[asyncio.Task[Any]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (pipe(reader, target_writer), pipe(target_reader, writer)):
            running = asyncio.ensure_future(task)
            tasks.add(running)
            running.add_done_callback(tasks.discard)

    server = await asyncio.start_server(connected, host, 0)
    return server, tasks


class Workers:
    """Worker processes of the SCALE app."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.path = log
        self.log = log.open("ab")
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, count: int, *, prefix: tuple[str, ...] = (), **env: str) -> None:
        for _ in range(count):
            args = [*prefix, sys.executable, "-m", "perdure", "worker", SPEC]
            proc = await asyncio.create_subprocess_exec(
                *args,
                "--concurrency",
                "10",
                env={**self.env, **env},
                cwd=ROOT,
                stderr=self.log,
            )
            self.procs.append(proc)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            for proc in self.procs:
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    text = await asyncio.to_thread(self.path.read_text, errors="replace")
                    tail = text[-3000:]
                    raise RuntimeError(
                        f"worker {proc.pid} did not stop within 60 s of SIGTERM:\n{tail}"
                    ) from None
        finally:
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self.procs = []
            self.log.close()


def _transactions(database: str) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _live(app: perdure.App, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(await app.store.live_workers(app="bench")) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not start")
        await asyncio.sleep(0.1)


async def _load(app: perdure.App, database: str, workers: int, quick: bool) -> list[float]:
    """Idle transactions/s, W1's runs/s and transactions per run, with `workers` running."""
    await _live(app, workers)
    await asyncio.sleep(2.0)  # their start-up's writes are counted before the window
    window = 3.0 if quick else 10.0
    before = await asyncio.to_thread(_transactions, database)
    await asyncio.sleep(window)
    idle = (await asyncio.to_thread(_transactions, database) - before) / window
    runs = 100 if quick else 500
    three = app.get_task("three")
    before = await asyncio.to_thread(_transactions, database)
    start = time.perf_counter()
    handles = await asyncio.gather(*(three.trigger(i) for i in range(runs)))
    for i, handle in enumerate(handles):
        assert await handle.result(timeout=300) == 3 * i
    elapsed = time.perf_counter() - start
    settle = 1.5  # the backends' statistics reach pg_stat_database within a second
    await asyncio.sleep(settle)
    spent = await asyncio.to_thread(_transactions, database) - before - idle * settle
    return [idle, runs / elapsed, spent / runs]


async def _takeover(
    app: perdure.App, workdir: Path, base: dict[str, str], victim_env: dict[str, str], netns: bool
) -> float:
    """Seconds from the victim's host going silent to the held step starting again on the
    survivor."""
    log, gate = workdir / "held.log", workdir / "gate"
    log.write_text("")
    gate.touch()
    env = {**base, "SCALE_LOG": str(log), "SCALE_GATE": str(gate)}
    victims = Workers(env, workdir / "victim.log")
    survivors = Workers(env, workdir / "survivor.log")
    prefix = ("ip", "netns", "exec", NAMESPACE) if netns else ()
    try:
        await victims.start(1, prefix=prefix, **victim_env)
        await _live(app, 1)
        handle = await app.get_task("hold").trigger("held")
        while not log.read_text():  # noqa: ASYNC110 - written by another process
            await asyncio.sleep(0.01)
        await survivors.start(1)
        await _live(app, 2)
        await asyncio.sleep(2.0)  # the survivor serves (and beats) before the victim goes
        (victim,) = victims.procs
        if netns:
            await asyncio.to_thread(_ip, "link", "set", HOST_SIDE, "down")
        else:
            victim.send_signal(signal.SIGSTOP)
        silent = time.time()
        while len(log.read_text().splitlines()) < 2:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.01)
        started = float(log.read_text().splitlines()[1].split()[2])
        gate.unlink()
        assert await handle.result(timeout=120) == "held"
        return started - silent
    finally:
        for proc in victims.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if netns:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "set", HOST_SIDE, "up")
        await victims.stop()
        await survivors.stop()


@contextlib.asynccontextmanager
async def _victim_routes(database: str, netns: bool, redis_port: int) -> AsyncIterator[Any]:
    """What the victim's worker is given to reach the database and Redis from its host."""
    if not netns:
        yield {"database": database, "redis": f"redis://127.0.0.1:{redis_port}/0"}
        return
    parts = urlsplit(database)
    relay, tasks = await _relay(HOST_IP, parts.port or 5432)
    relay_port = relay.sockets[0].getsockname()[1]
    user = f"{parts.username}@" if parts.username else ""
    try:
        yield {
            "database": parts._replace(netloc=f"{user}{HOST_IP}:{relay_port}").geturl(),
            "redis": f"redis://{HOST_IP}:{redis_port}/0",
        }
    finally:
        relay.close()
        for task in list(tasks):
            task.cancel()


async def scale(database: str, workdir: Path, quick: bool) -> list[Metric]:
    if not database.startswith("postgres"):
        return []  # SQLite serves one host: neither many hosts nor Redis apply
    count = 2 if quick else 8
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": database,
        "PERDURE_BLOB_URL": f"file://{workdir}/blobs",
        "PERDURE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    }
    base.pop("PERDURE_REDIS_URL", None)
    metrics: list[Metric] = []
    with _namespace() as netns, _redis(["127.0.0.1", HOST_IP] if netns else ["127.0.0.1"]) as rp:
        redis_url = f"redis://127.0.0.1:{rp}/0"
        for mode, redis in (("postgres", None), ("redis", redis_url)):
            app = perdure.App("bench", database=database, blobs=base["PERDURE_BLOB_URL"])
            if redis is not None:
                app.redis_url = redis
            for name in ("three", "hold"):
                app.task(name=name)(_remote)
            env = {**base, **({"PERDURE_REDIS_URL": redis} if redis else {})}
            workers = Workers(env, workdir / f"workers-{mode}.log")
            try:
                await workers.start(count)
                idle, throughput, per_run = await _load(app, database, count, quick)
            finally:
                await workers.stop()
            async with _victim_routes(database, netns, rp) as routes:
                victim_env = {"PERDURE_DATABASE_URL": routes["database"]}
                if redis is not None:
                    victim_env["PERDURE_REDIS_URL"] = routes["redis"]
                taken = await _takeover(app, workdir, env, victim_env, netns)
            await app.close()
            facts = {"workers": count, "with": mode}
            metrics += [
                {"workload": "SCALE", "metric": f"idle_xact_per_s_{mode}", "value": idle, **facts},
                {"workload": "SCALE", "metric": f"w1_runs_per_s_{mode}", "value": throughput},
                {"workload": "SCALE", "metric": f"w1_xact_per_run_{mode}", "value": per_run},
                {
                    "workload": "SCALE",
                    "metric": f"takeover_s_{mode}",
                    "value": taken,
                    "method": "netns" if netns else "sigstop",
                    "heartbeat_interval": HEARTBEAT,
                },
            ]
    return metrics


async def _remote(*args: Any) -> Any:
    raise AssertionError("run by the worker processes")
