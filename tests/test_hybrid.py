"""Hybrid workers (perdure.store.remote): `perdure worker --server URL --api-key KEY` runs the
app's code with no database of its own (its PERDURE_DATABASE_URL is bogus here); claims,
heartbeats, journal writes and ends go through a real `perdure server`'s worker API, with the
guarantees of a direct worker. Real processes on both stores."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import perdure
from perdure.records import RunStatus

from . import crashapp
from .conftest import WorkerProcess, wait_until
from .served import ServerProcess, free_port, healthy

BOGUS_DATABASE = "postgresql://nobody:wrong@127.0.0.1:1/nothing"


@dataclass
class Hybrid:
    """A server of tests/crashapp.py on the test's database, a key of scope worker, and the
    app as the test sees it (on the database)."""

    url: str
    key: str
    app: perdure.App
    tmp: Path
    server: ServerProcess
    env: dict[str, str]

    async def restart(self) -> None:
        """Stop the server (SIGTERM) and start it again on the same port."""
        self.server.stop()
        port = int(self.url.rsplit(":", 1)[1])
        log = self.tmp / "server.log"
        self.server = ServerProcess("tests.crashapp:app", self.env, port=port, log=log)
        await wait_until(lambda: healthy(self.url), timeout=30)

    @property
    def log(self) -> Path:
        return self.tmp / "side-effects.log"

    def worker(self, procs: list[WorkerProcess], **env: str) -> WorkerProcess:
        """A hybrid worker process: the server's URL and key, a database URL that cannot work."""
        proc = WorkerProcess(
            "tests.crashapp:app",
            {
                "PERDURE_DATABASE_URL": BOGUS_DATABASE,
                "PERDURE_SERVER_URL": self.url,
                "PERDURE_API_KEY": self.key,
                "PERDURE_BLOB_URL": f"file://{self.tmp}/worker-blobs",
                "CRASH_LOG": str(self.log),
                "CRASH_GATE": str(self.tmp / "gate"),
                **env,
            },
            log=self.tmp / f"hybrid-{len(procs)}.log",
        )
        procs.append(proc)
        return proc

    def count(self, event: str, key: str, index: int) -> int:
        return sum(r[:3] == [event, key, str(index)] for r in crashapp.records(self.log))


@pytest.fixture
async def hybrid(database_url: str, tmp_path: Path) -> AsyncIterator[Hybrid]:
    blobs = f"file://{tmp_path}/blobs"
    app = perdure.App("crash", database=database_url, blobs=blobs)
    app.task(name="pipeline")(crashapp.pipeline.fn)
    _record, key = await app.admin.create_api_key(name="hybrid", scope="worker")
    port = free_port()
    env = {"PERDURE_DATABASE_URL": database_url, "PERDURE_BLOB_URL": blobs}
    server = ServerProcess("tests.crashapp:app", env, port=port, log=tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    hybrid = Hybrid(url, key, app, tmp_path, server, env)
    try:
        await wait_until(lambda: healthy(url), timeout=30)
        yield hybrid
    finally:
        hybrid.server.stop()
        await app.close()


async def test_a_hybrid_worker_with_no_database_runs_50_runs_of_3_steps(
    hybrid: Hybrid, worker_processes: list[WorkerProcess]
) -> None:
    proc = hybrid.worker(worker_processes)
    task = hybrid.app.get_task("pipeline")
    handles = [await task.trigger(f"h{i}", 3) for i in range(50)]
    for i, handle in enumerate(handles):
        assert await handle.result(timeout=60) == [f"h{i}:{n}" for n in (1, 2, 3)]
    for i in range(50):
        for n in (1, 2, 3):
            assert hybrid.count("done", f"h{i}", n) == 1
    (only,) = await hybrid.app.store.live_workers(app="crash")  # no other worker ran them
    assert only.pid == proc.pid


async def test_a_killed_hybrid_worker_is_taken_over_once_its_connection_drops(
    hybrid: Hybrid, worker_processes: list[WorkerProcess]
) -> None:
    """SIGKILL a hybrid worker in step 2 of 3: the server sees its connection close and reaps
    it, so another hybrid worker (which does not check PIDs here: only the server can tell)
    takes the run over well before a heartbeat timeout would, and step 1 is not run again."""
    (hybrid.tmp / "gate").touch()
    victim = hybrid.worker(worker_processes, CRASH_GATE_STEP="2")
    handle = await hybrid.app.get_task("pipeline").trigger("t", 3)
    await wait_until(lambda: hybrid.count("start", "t", 2) == 1, timeout=30)
    survivor = hybrid.worker(worker_processes, PERDURE_PID_CHECK="0")
    await wait_until(lambda: _live(hybrid, 2), timeout=30)
    (hybrid.tmp / "gate").unlink()
    victim.kill()
    killed_at = time.time()
    assert await handle.result(timeout=60) == ["t:1", "t:2", "t:3"]
    restarted = max(
        float(r[3]) for r in crashapp.records(hybrid.log) if r[:3] == ["start", "t", "2"]
    )
    assert hybrid.count("start", "t", 1) == 1
    assert hybrid.count("start", "t", 2) == 2
    assert restarted - killed_at < 30  # far below the 90 s a stalled heartbeat takes
    run = await hybrid.app.store.get_run(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert survivor.proc.poll() is None
    server_log = (hybrid.tmp / "server.log").read_text()
    assert (
        f"worker {victim_id(hybrid, victim)} lost its connection: 1 run(s) requeued" in server_log
    )


def victim_id(hybrid: Hybrid, victim: WorkerProcess) -> str:
    """The worker id of a worker process, from its log's start line."""
    for line in victim.log.read_text().splitlines():
        if " started: app " in line:
            return line.split("worker ", 1)[1].split()[0]
    raise AssertionError(f"no start line in {victim.log}")


async def _live(hybrid: Hybrid, count: int) -> bool:
    return len(await hybrid.app.store.live_workers(app="crash")) >= count


async def test_a_server_restarted_mid_load_loses_nothing(
    hybrid: Hybrid, worker_processes: list[WorkerProcess]
) -> None:
    """The server is stopped and started again while a hybrid worker is in the middle of 30
    runs: the worker retries with backoff until the server is back, keeps its session (it is
    not reaped: the server ended the session as it stopped), and every run completes once,
    with no recorded step run again."""
    proc = hybrid.worker(worker_processes)
    task = hybrid.app.get_task("pipeline")
    handles = [await task.trigger(f"s{i}", 3, 0.05) for i in range(30)]
    await wait_until(lambda: len(crashapp.records(hybrid.log)) >= 20, timeout=60)
    await hybrid.restart()
    for i, handle in enumerate(handles):
        assert await handle.result(timeout=90) == [f"s{i}:{n}" for n in (1, 2, 3)]
    store = hybrid.app.store
    for i, handle in enumerate(handles):
        attempts = await store.load_attempts(handle.id)
        assert len([a for a in attempts if a.seq == 0 and a.error is None]) == 1
        for entry in await store.load_journal(handle.id):
            starts = [
                float(r[3])
                for r in crashapp.records(hybrid.log)
                if r[:3] == ["start", f"s{i}", str(entry.seq)]
            ]
            assert entry.finished_at is not None
            assert all(t < entry.finished_at for t in starts), (handle.id, entry.seq)
    assert proc.proc.poll() is None  # the same worker throughout
    (only,) = await store.live_workers(app="crash")
    assert only.pid == proc.pid


@pytest.mark.parametrize("worker_has_the_key", [True, False], ids=["direct", "through-server"])
async def test_a_hybrid_worker_puts_large_values_into_the_object_store_itself(
    tmp_path: Path,
    worker_processes: list[WorkerProcess],
    worker_has_the_key: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's blobs are in a bucket (a private moto_server whose request log the test
    reads), encrypted with its key. A hybrid worker with no bucket credentials and the same key
    puts each large step result into the bucket itself, by a presigned URL the server hands
    out, encrypted as the server would; the server receives only the reference. A worker
    without the key cannot encrypt as the server does: its values go through the server."""
    from perdure.blobs.base import content_key, written_with
    from perdure.blobs.object import ObjectBlobStore
    from perdure.crypto import Keyring, new_key, parse_key
    from perdure.serde import decode
    from perdure.testing import new_bucket, s3_test_server

    key = new_key()
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", key)  # the server's, and the test's
    size = 300 * 1024  # over the 256 KiB inline limit
    moto_log = tmp_path / "moto.log"
    with s3_test_server(log=moto_log) as endpoint:
        bucket = new_bucket(endpoint)
        database = f"sqlite:///{tmp_path}/perdure.db"
        env = {"PERDURE_DATABASE_URL": database, "PERDURE_BLOB_URL": bucket}
        app = perdure.App("crash", database=database, blobs=bucket)
        app.task(name="bigs")(crashapp.bigs.fn)
        _record, api_key = await app.admin.create_api_key(name="hybrid", scope="worker")
        port = free_port()
        server = ServerProcess("tests.crashapp:app", env, port=port, log=tmp_path / "server.log")
        hybrid = Hybrid(f"http://127.0.0.1:{port}", api_key, app, tmp_path, server, env)
        try:
            await wait_until(lambda: healthy(hybrid.url), timeout=30)
            worker_env = {"PERDURE_ENCRYPTION_KEY": key if worker_has_the_key else ""}
            proc = hybrid.worker(worker_processes, **worker_env)
            handle = await app.get_task("bigs").trigger("b", size)
            expected = crashapp.payload("b-1", size) + crashapp.payload("b-2", size)
            assert await handle.result(timeout=60) == hashlib.sha256(expected).hexdigest()
            journal = await app.store.load_journal(handle.id)
            for entry, seed in zip(journal, ("b-1", "b-2"), strict=True):
                value = entry.value
                assert value is not None
                assert value.blob_key == content_key(value.data)
                decoded = decode(value.data, codec=value.codec, what="test")  # type: ignore[arg-type]
                assert decoded == crashapp.payload(seed, size)
                stored = await ObjectBlobStore(bucket)._stored(value.blob_key)
                assert written_with(stored) == Keyring(parse_key(key, source="test")).current_id
                path = f"{bucket.split('/')[2]}/blobs/{value.blob_key[:2]}/{value.blob_key[2:]}"
                presigned = f"PUT /{path}?X-Amz-"
                assert (presigned in moto_log.read_text()) is worker_has_the_key
        finally:
            hybrid.server.stop()
            await app.close()
    fallback = "values go through the server" in proc.log.read_text()
    assert fallback is not worker_has_the_key


async def test_sigterm_drains_a_hybrid_worker_and_releases_what_outlasts_it(
    hybrid: Hybrid, worker_processes: list[WorkerProcess]
) -> None:
    """SIGTERM a hybrid worker in step 2 of 3 with a short drain: it releases the run through
    the server and exits 0 (not reaped: it said goodbye); another hybrid worker resumes the run
    after step 1, which does not run again."""
    (hybrid.tmp / "gate").touch()
    proc = hybrid.worker(worker_processes, CRASH_GATE_STEP="2", PERDURE_DRAIN_TIMEOUT="0.3")
    handle = await hybrid.app.get_task("pipeline").trigger("d", 3)
    await wait_until(lambda: hybrid.count("start", "d", 2) == 1, timeout=30)
    assert proc.terminate(timeout=30) == 0
    run = await hybrid.app.store.get_run(handle.id)
    assert run.status is RunStatus.QUEUED  # released, not lost and not failed
    assert run.worker_id is None
    assert "draining 1 run(s)" in proc.log.read_text()
    assert await hybrid.app.store.live_workers(app="crash") == []  # it deregistered
    (hybrid.tmp / "gate").unlink()
    hybrid.worker(worker_processes)
    assert await handle.result(timeout=60) == ["d:1", "d:2", "d:3"]
    assert hybrid.count("start", "d", 1) == 1
    assert hybrid.count("start", "d", 2) == 2
