"""Waits with real worker processes: a worker killed while its runs wait loses nothing, waiting
runs hold no slot, a token completed by two processes at once is accepted once, and the CLI."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

import perdure
from perdure.records import RunStatus

from . import waitapp
from .conftest import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.crash


def _app(database_url: str, tmp_path: Path) -> perdure.App:
    app = perdure.App("waits", database=database_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="approval")(waitapp.approval.fn)
    app.task(name="chat")(waitapp.chat.fn)
    return app


def _env(app: perdure.App, tmp_path: Path) -> dict[str, str]:
    return {
        "PERDURE_DATABASE_URL": app.database,
        "PERDURE_BLOB_URL": app.blobs,
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }


def _cli(app: perdure.App, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _perdure(_env(app, tmp_path), *args, "--database", app.database)


def _perdure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perdure", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _complete_at_once(
    app: perdure.App, tmp_path: Path, token_id: str, who: list[str]
) -> list[subprocess.Popen[str]]:
    """`perdure tokens complete` from one process per name, started together."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perdure",
                "tokens",
                "complete",
                token_id,
                "--data",
                json.dumps({"by": name}),
                "--database",
                app.database,
                "--json",
            ],
            env={**_env(app, tmp_path), "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in who
    ]


async def _count(app: perdure.App, status: RunStatus) -> int:
    return len(await app.store.list_runs(status=status, limit=1000))


async def test_runs_waiting_on_tokens_hold_no_slot_and_survive_a_killed_worker(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    """200 runs wait on tokens under a worker of concurrency 5 (waiting holds no slot); the
    worker is SIGKILLed; completing the tokens afterwards resumes each run once, on a new
    worker, and no recorded step runs again."""
    app = _app(database_url, tmp_path)
    env = _env(app, tmp_path)
    worker = WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w0.log", concurrency=5)
    worker_processes.append(worker)
    task = app.get_task("approval")
    handles = [await task.trigger(f"r{i}") for i in range(200)]
    await wait_until(lambda: _count_is(app, RunStatus.WAITING, 200), timeout=120)
    worker.kill()

    again = WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w1.log", concurrency=5)
    worker_processes.append(again)
    await asyncio.gather(*(h.complete_token("approval", i) for i, h in enumerate(handles)))
    results = [await h.result(timeout=120) for h in handles]
    assert results == list(range(200))
    lines = (tmp_path / "side-effects.log").read_text().split("\n")
    done = collections.Counter(tuple(line.split()[:2]) for line in lines if line)
    assert all(done[("asked", f"r{i}")] == 1 for i in range(200))  # none ran again
    assert all(done[("decided", f"r{i}")] == 1 for i in range(200))
    pids = {line.split()[2] for line in lines if line.startswith("decided")}
    assert pids == {str(again.pid)}
    await app.close()


async def _count_is(app: perdure.App, status: RunStatus, n: int) -> bool:
    return await _count(app, status) == n


async def test_a_token_completed_by_two_processes_at_once_is_accepted_once(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    env = _env(app, tmp_path)
    worker_processes.append(WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w.log"))
    handle = await app.get_task("approval").trigger("r")
    await wait_until(lambda: _count_is(app, RunStatus.WAITING, 1), timeout=60)
    (token,) = await app.store.list_tokens(app=app.name, run_id=handle.id)

    shown = _cli(app, tmp_path, "runs", "show", handle.id)
    assert shown.returncode == 0, shown.stderr
    assert f"waiting for: token {token.id}" in shown.stdout
    listed = _cli(app, tmp_path, "tokens", "list", "--run", handle.id, "--json")
    assert [t["status"] for t in json.loads(listed.stdout)] == ["waiting"]

    procs = _complete_at_once(app, tmp_path, token.id, ["ana", "bob"])
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    winner = next(json.loads(out)["data"] for out, _err in outs if out.startswith('{"id"'))
    refused = next(out for (out, _err), p in zip(outs, procs, strict=True) if p.returncode)
    assert "TokenAlreadyCompleted" in refused
    assert await handle.result(timeout=60) == winner
    await app.close()


async def test_messages_and_events_from_the_cli(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    env = _env(app, tmp_path)
    worker_processes.append(WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w.log"))
    handle = await app.get_task("chat").trigger(2)
    await handle.send("chat", "hello")
    await wait_until(lambda: _count_is(app, RunStatus.WAITING, 1), timeout=60)
    shown = _cli(app, tmp_path, "runs", "show", handle.id, "--json")
    assert json.loads(shown.stdout)["waiting_for"]["kind"] == "message"
    await handle.send("chat", "again")
    assert await handle.result(timeout=60) == ["hello", "again"]

    sent = _perdure(
        env,
        "events",
        "send",
        "order.paid",
        "--payload",
        '{"order_id": 7}',
        "--app",
        "tests.waitapp:app",
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["created"] is True
    listed = _cli(app, tmp_path, "events", "list", "--json")
    assert [(e["app"], e["name"]) for e in json.loads(listed.stdout)] == [("waits", "order.paid")]
    await app.close()


async def test_metadata_and_streams_from_a_worker_process(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    """A run on a worker process streams words and sets its metadata; this process follows the
    stream live and reads the metadata while the run waits, then to the run's end."""
    app = _app(database_url, tmp_path)
    app.task(name="narrate")(waitapp.narrate.fn)
    env = _env(app, tmp_path)
    worker_processes.append(WorkerProcess("tests.waitapp:app", env, log=tmp_path / "w.log"))
    handle = await app.get_task("narrate").trigger(["durable", "runs"], tags=["demo"])
    heard: list[str] = []

    async def follow() -> None:
        async for word in handle.stream("words", timeout=60):
            heard.append(word)

    following = asyncio.create_task(follow())
    await wait_until(lambda: heard == ["durable", "runs"], timeout=60)
    await wait_until(lambda: _count_is(app, RunStatus.WAITING, 1), timeout=60)
    assert await handle.metadata() == {"said": 2}
    await handle.complete_token("more")
    await asyncio.wait_for(following, 60)
    assert heard == ["durable", "runs", "end"]
    assert await handle.result(timeout=60) == 3
    assert [r.id for r in await app.admin.list_runs(tag="demo")] == [handle.id]
    await app.close()
