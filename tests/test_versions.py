"""Versions, patches, replay checks and replays with real worker processes (tests/versionapp.py,
whose code changes with the environment as a deploy changes it): a run started by version v1
stays put under a v2 worker and is finished by a v1 worker; perdure.patched takes both
branches across a deploy; replay-check catches a renamed step and passes unchanged code; a run
replayed from step 3 of 5 runs steps 3 to 5 only; bulk cancel by filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.records import RunStatus

from .conftest import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.crash

SPEC = "tests.versionapp:app"


def _env(database_url: str, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "VERSIONS_LOG": str(tmp_path / "side-effects.log"),
        "VERSIONS_NAP": "1.0",
        **more,
    }


def _perdure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perdure", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "side-effects.log"
    return path.read_text().split() if path.exists() else []


def _app(database_url: str, tmp_path: Path) -> perdure.App:
    """An app that only triggers and reads (its own code is not what runs)."""
    app = perdure.App("versioned", database=database_url, blobs=f"file://{tmp_path}/blobs")

    @app.task(name="deploy")
    async def deploy(key: str) -> str:
        raise AssertionError("runs in the worker processes")

    @app.task(name="five")
    async def five(key: str) -> int:
        raise AssertionError("runs in the worker processes")

    return app


async def _status(app: perdure.App, run_id: str) -> RunStatus:
    return (await app.store.get_run(run_id, values=False)).status


async def _waiting(app: perdure.App, run_id: str) -> bool:
    return await _status(app, run_id) is RunStatus.WAITING


async def test_a_run_stays_with_the_version_that_started_it(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    v1 = WorkerProcess(SPEC, _env(database_url, tmp_path, PERDURE_VERSION="v1"), log=tmp_path / "1")
    worker_processes.append(v1)
    old = await app.get_task("deploy").trigger("old")
    await wait_until(lambda: _waiting(app, old.id), timeout=60)  # (its nap)
    assert (await app.store.get_run(old.id, values=False)).version == "v1"
    assert v1.terminate() == 0  # the deploy: v1 stops, v2 starts

    v2_env = _env(database_url, tmp_path, PERDURE_VERSION="v2")
    v2 = WorkerProcess(SPEC, v2_env, log=tmp_path / "2")
    worker_processes.append(v2)
    new = await app.get_task("deploy").trigger("new")
    assert await new.result(timeout=60) == "done"  # v2 runs what is new ...
    run = await app.store.get_run(old.id, values=False)
    # ... and left the old run, due since before the new one's nap ended, as it was
    assert run.status is RunStatus.WAITING
    assert run.version == "v1"
    assert "old:3" not in _lines(tmp_path)
    assert (await app.store.get_run(new.id, values=False)).version == "v2"
    listed = _perdure(v2_env, "runs", "list", "--stranded", "--app", SPEC, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["id"], r["version"]) for r in json.loads(listed.stdout)] == [(old.id, "v1")]

    worker_processes.append(
        WorkerProcess(SPEC, _env(database_url, tmp_path, PERDURE_VERSION="v1"), log=tmp_path / "3")
    )
    assert await old.result(timeout=60) == "done"  # a v1 worker finishes it
    assert _lines(tmp_path).count("old:3") == 1
    assert _lines(tmp_path).count("old:1") == 1  # resumed, not run again
    await app.close()


async def test_patched_takes_both_branches_across_a_deploy(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    before = WorkerProcess(
        SPEC, _env(database_url, tmp_path, PERDURE_VERSION="stable"), log=tmp_path / "1"
    )
    worker_processes.append(before)
    old = await app.get_task("deploy").trigger("old")
    await wait_until(lambda: _waiting(app, old.id), timeout=60)
    assert before.terminate() == 0

    patched_env = _env(database_url, tmp_path, PERDURE_VERSION="stable", VERSIONS_PATCH="1")
    # the patched code replays the old run's journal, and would take the old path
    checked = _perdure(patched_env, "replay-check", SPEC, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout) == {"checked": 1, "failed": []}

    worker_processes.append(WorkerProcess(SPEC, patched_env, log=tmp_path / "2"))
    new = await app.get_task("deploy").trigger("new")
    assert await old.result(timeout=60) == "done"
    assert await new.result(timeout=60) == "done"
    lines = _lines(tmp_path)
    assert [line for line in lines if line.startswith("old:")] == ["old:1", "old:2", "old:3"]
    assert [line for line in lines if line.startswith("new:")] == [
        "new:1",
        "new:extra",
        "new:2",
        "new:3",
    ]
    journal = await app.store.load_journal(new.id, values=False)
    assert [(e.kind, e.name) for e in journal][:2] == [("step", "record"), ("patch", "extra-step")]
    await app.close()


async def test_replay_check_catches_a_renamed_step_and_passes_unchanged_code(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    env = _env(database_url, tmp_path, VERSIONS_NAP="0")
    worker_processes.append(WorkerProcess(SPEC, env, log=tmp_path / "w"))
    handles = [await app.get_task("deploy").trigger(f"r{i}") for i in range(3)]
    for handle in handles:
        assert await handle.result(timeout=60) == "done"

    same = _perdure(env, "replay-check", SPEC)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "3 run(s) replay against this code" in same.stdout

    renamed = _perdure({**env, "VERSIONS_RENAME": "1"}, "replay-check", SPEC, "--json")
    assert renamed.returncode == 1, renamed.stdout + renamed.stderr
    report: dict[str, Any] = json.loads(renamed.stdout)
    assert report["checked"] == 3
    assert {f["run_id"] for f in report["failed"]} == {h.id for h in handles}
    first = report["failed"][0]
    assert (first["seq"], first["called"], first["recorded"]) == (
        1,
        "step record-renamed",
        "step record",
    )
    lines = _lines(tmp_path)
    assert len(lines) == 3 * 3  # the checks ran no step
    table = _perdure({**env, "VERSIONS_RENAME": "1"}, "replay-check", SPEC, "--task", "deploy")
    assert table.returncode == 1
    assert "3 of 3 run(s) would not replay" in table.stdout
    await app.close()


async def test_a_replay_from_step_3_of_5_runs_steps_3_to_5_only(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    app = _app(database_url, tmp_path)
    env = _env(database_url, tmp_path)
    broken = f"{tmp_path}/side-effects.log.fail3"
    open(broken, "w").close()  # noqa: ASYNC230 - a marker file
    worker_processes.append(WorkerProcess(SPEC, env, log=tmp_path / "w"))
    failed = await app.get_task("five").trigger("k")
    with pytest.raises(perdure.errors.TaskFailed):
        await failed.result(timeout=60)
    assert _lines(tmp_path) == ["k:1", "k:2", "k:3"]
    os.remove(broken)  # the fix

    out = _perdure(env, "runs", "replay", failed.id, "--from-step", "3", "--app", SPEC, "--json")
    assert out.returncode == 0, out.stderr
    replayed = json.loads(out.stdout)
    assert replayed["replay_of"] == failed.id
    handle = await app.handle(replayed["id"])
    assert await handle.result(timeout=60) == 15
    assert _lines(tmp_path) == ["k:1", "k:2", "k:3", "k:3", "k:4", "k:5"]  # 1 and 2 reused
    shown = _perdure(env, "runs", "show", handle.id, "--json")
    assert json.loads(shown.stdout)["replay_of"] == failed.id

    again = await failed.replay(from_step=2)  # the Python API: from step 2 on
    assert await again.result(timeout=60) == 15
    assert _lines(tmp_path)[6:] == ["k:2", "k:3", "k:4", "k:5"]
    await app.close()


async def test_bulk_cancel_by_filter(database_url: str, tmp_path: Path) -> None:
    app = _app(database_url, tmp_path)
    env = _env(database_url, tmp_path)
    deploys = [await app.get_task("deploy").trigger(f"d{i}") for i in range(3)]
    fives = [await app.get_task("five").trigger(f"f{i}") for i in range(2)]
    args = ("runs", "cancel", "--task", "deploy", "--status", "queued", "--since", "1h")

    dry = _perdure(env, *args, "--dry-run", "--app", SPEC, "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["count"] == 3
    assert {await _status(app, h.id) for h in deploys + fives} == {RunStatus.QUEUED}

    done = _perdure(env, *args, "--app", SPEC)
    assert done.returncode == 0, done.stderr
    assert "cancelled 3 run(s)" in done.stdout
    assert [await _status(app, h.id) for h in deploys] == [RunStatus.CANCELLED] * 3
    assert [await _status(app, h.id) for h in fives] == [RunStatus.QUEUED] * 2
    nothing = _perdure(env, "runs", "cancel", "--app", SPEC)
    assert nothing.returncode != 0  # no run id and no filter: refused, nothing cancelled
    assert [await _status(app, h.id) for h in fives] == [RunStatus.QUEUED] * 2
    await app.close()
