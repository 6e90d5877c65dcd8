"""The perdure command, run as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.crypto import new_key
from perdure.ids import new_id
from perdure.records import (
    Attempt,
    EntryKind,
    EntryStatus,
    JournalEntry,
    NewRun,
    RunStatus,
    Transition,
    Value,
)

from .conftest import ROOT, WorkerProcess
from .store.test_contract import register


def perdure_cli(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
        "FLOW_LOG": str(tmp_path / "flow.log"),
    }
    command = [sys.executable, "-m", "perdure", *args]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            stdout, stderr = proc.communicate()
            pytest.fail(f"{command} hung for 60 s; its output and stacks:\n{stdout}\n{stderr}")
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def test_trigger_worker_list_show_cancel(
    tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    assert as_json(perdure_cli(tmp_path, "migrate", "--json")) == {
        "dry_run": False,
        "migrations": [
            "0001_initial",
            "0002_flow_control",
            "0003_retention",
            "0004_claim_order",
            "0005_running_by_worker",
            "0006_waits",
            "0007_schedules",
            "0008_run_data",
            "0009_api_keys",
            "0010_run_stats",
            "0011_run_tags",
            "0012_trace_context",
            "0013_versions",
            "0014_run_hooks",
            "0015_continue_as_new",
        ],
    }
    assert as_json(perdure_cli(tmp_path, "migrate", "--dry-run", "--json"))["migrations"] == []

    app = "tests.crashapp:app"
    queued = as_json(perdure_cli(tmp_path, "trigger", app, "pipeline", '["c", 1]', "--json"))
    assert queued["status"] == "queued"
    cancelled = as_json(perdure_cli(tmp_path, "runs", "cancel", queued["id"], "--json"))
    assert cancelled == {"id": queued["id"], "status": "cancelled"}

    env = {
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }
    worker_processes.append(WorkerProcess(app, env, log=tmp_path / "worker.log"))
    done = as_json(
        perdure_cli(
            tmp_path,
            "trigger",
            app,
            "pipeline",
            '{"run_key": "d", "steps": 2}',
            "--idempotency-key",
            "once",
            "--wait",
            "--timeout",
            "30",
            "--json",
        )
    )
    assert done["status"] == "completed"
    assert done["result"] == ["d:1", "d:2"]
    again = as_json(
        perdure_cli(
            tmp_path, "trigger", app, "pipeline", '["d", 2]', "--idempotency-key", "once", "--json"
        )
    )
    assert again["id"] == done["id"]

    listed = as_json(perdure_cli(tmp_path, "runs", "list", "--json"))
    assert {(r["id"], r["status"]) for r in listed} == {
        (queued["id"], "cancelled"),
        (done["id"], "completed"),
    }
    only = as_json(perdure_cli(tmp_path, "runs", "list", "--status", "completed", "--json"))
    assert [r["id"] for r in only] == [done["id"]]

    shown = as_json(perdure_cli(tmp_path, "runs", "show", done["id"], "--json"))
    assert [(e["seq"], e["name"], e["status"], e["attempts"]) for e in shown["journal"]] == [
        (1, "work", "completed", 1),
        (2, "work", "completed", 1),
    ]
    assert all(e["stored_size"] > 0 for e in shown["journal"])
    assert shown["stored_size"] == sum(e["stored_size"] for e in shown["journal"]) + len(
        b"\x92\xa3d:1\xa3d:2"
    )  # the journal plus the msgpack result ["d:1", "d:2"]
    table = perdure_cli(tmp_path, "runs", "show", done["id"]).stdout
    assert "completed" in table
    assert "work" in table

    replayed = as_json(perdure_cli(tmp_path, "runs", "replay", done["id"], "--app", app, "--json"))
    assert replayed["replay_of"] == done["id"]
    shown = as_json(perdure_cli(tmp_path, "runs", "show", replayed["id"], "--json"))
    assert shown["args"] == [["d", 2], {}]  # (positional, keyword) as triggered
    stats = as_json(perdure_cli(tmp_path, "stats", "--since", "1h", "--json"))
    (pipeline,) = stats["tasks"]
    assert pipeline["task"] == "pipeline"
    assert pipeline["ended"]["cancelled"] == 1
    assert sum(pipeline["ended"].values()) + sum(pipeline["active"].values()) == 3
    assert "pipeline" in perdure_cli(tmp_path, "stats").stdout
    assert worker_processes[0].terminate() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trigger", "tests.crashapp:app", "nope"], "not registered"),
        (["trigger", "tests.crashapp:app", "pipeline", '["x"]'], "do not fit"),
        (["trigger", "tests.crashapp:app", "pipeline", '["x", "two"]'], "'steps' expects int"),
        (["trigger", "tests.crashapp:app", "pipeline", "{bad"], "not JSON"),
        (["runs", "show", "missing"], "no run with id"),
        (["worker", "tests.crashapp"], "MODULE:APP"),
        (["worker", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["worker", "tests.crashapp:app", "--log-level", "LOUD"], "unknown log level"),
        (["runs", "list", "--limit", "-1"], "greater than or equal to 1"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    done = perdure_cli(tmp_path, *args, check=False)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert message in " ".join(said.split())  # (the console wraps long lines)
    assert "Traceback" not in said


def test_worker_logs_json_lines(tmp_path: Path, worker_processes: list[WorkerProcess]) -> None:
    env = {
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }
    worker = WorkerProcess("tests.crashapp:app", env, log=tmp_path / "worker.log", args=("--json",))
    worker_processes.append(worker)
    done = as_json(
        perdure_cli(
            tmp_path,
            "trigger",
            "tests.crashapp:app",
            "pipeline",
            '["j", 1]',
            "--wait",
            "--timeout",
            "30",
            "--json",
        )
    )
    assert worker.terminate() == 0
    records = [json.loads(line) for line in worker.log.read_text().splitlines()]
    mine = [r for r in records if r.get("run_id") == done["id"]]
    assert [r["action"] for r in mine] == ["run_start", "run_completed"]
    assert all(r["task"] == "pipeline" for r in mine)
    assert {"worker_start", "worker_stop"} <= {r.get("action") for r in records}


def test_queues_list_set_pause_resume(tmp_path: Path) -> None:
    app = "tests.flowapp:app"
    queued = as_json(
        perdure_cli(tmp_path, "trigger", app, "limited", '["x", 0]', "--delay", "600", "--json")
    )
    assert queued["status"] == "queued"
    changed = as_json(
        perdure_cli(
            tmp_path, "queues", "set", "shared", "--concurrency", "5", "--app", app, "--json"
        )
    )
    assert (changed["app"], changed["concurrency"], changed["paused"]) == ("flow", 5, False)
    paused = as_json(
        perdure_cli(tmp_path, "queues", "pause", "shared", "--app-name", "flow", "--json")
    )
    assert paused["paused"] is True
    (listed,) = as_json(perdure_cli(tmp_path, "queues", "list", "--json"))
    assert (listed["name"], listed["concurrency"], listed["queued"], listed["overridden"]) == (
        "shared",
        5,
        1,
        True,
    )
    resumed = as_json(
        perdure_cli(tmp_path, "queues", "resume", "shared", "--app-name", "flow", "--json")
    )
    assert resumed["paused"] is False
    unlimited = as_json(
        perdure_cli(
            tmp_path, "queues", "set", "shared", "--no-limit", "--app-name", "flow", "--json"
        )
    )
    assert unlimited["concurrency"] is None
    refused = perdure_cli(tmp_path, "queues", "set", "shared", "--app-name", "flow", check=False)
    assert refused.returncode != 0
    assert "--concurrency N or --no-limit" in refused.stdout + refused.stderr


def test_runs_show_stays_readable_for_huge_and_unreadable_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with thousands of journal entries, whose values were encrypted with a key this
    process does not have: `runs show` still shows it (sizes, statuses, attempts), says why
    its values cannot be shown, and the table shows the first and last entries."""
    entries = 5_000
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", new_key())
    run_id = asyncio.run(_huge_run(tmp_path, entries))
    monkeypatch.delenv("PERDURE_ENCRYPTION_KEY")
    shown = as_json(perdure_cli(tmp_path, "runs", "show", run_id, "--json"))
    assert len(shown["journal"]) == entries
    assert all(e["stored_size"] > 0 for e in shown["journal"])
    assert "EncryptionError" in shown["unreadable"]
    assert "result" not in shown
    assert shown["result_size"]["raw"] == 1
    table = perdure_cli(tmp_path, "runs", "show", run_id, "--limit", "10").stdout
    assert "values unreadable here" in table
    assert f"{entries - 10:,} more" in table
    assert table.count("work") == 10


async def _huge_run(tmp_path: Path, entries: int) -> str:
    app = perdure.App(
        "crash", database=f"sqlite:///{tmp_path}/perdure.db", blobs=f"file://{tmp_path}/blobs"
    )
    store = app.store
    await store.open()
    now = time.time()
    value = Value(codec="msgpack", data=b"\xc3", raw_size=1)
    run_id, _ = await store.create_run(
        NewRun(
            id=new_id(), app="crash", task="pipeline", queue="default", args=value, available_at=now
        )
    )
    await register(store, "w1", app="crash")
    (run,) = await store.claim_runs(app="crash", worker_id="w1", tasks=["pipeline"], limit=1)
    journal = [
        JournalEntry(
            seq=seq,
            kind=EntryKind.STEP,
            name="work",
            status=EntryStatus.COMPLETED,
            value=value,
            started_at=now,
            finished_at=now,
            attempt=Attempt(
                run_id=run_id, run_attempt=1, seq=seq, attempt=1, started_at=now, finished_at=now
            ),
        )
        for seq in range(1, entries + 1)
    ]
    await store.append(run_id, run.held, entries=journal, attempts=[])
    await store.finish_attempt(
        run_id,
        run.held,
        Transition(status=RunStatus.COMPLETED, result=value),
        entries=[],
        attempts=[],
    )
    await app.close()
    return run_id


def test_errors_are_json_with_json(tmp_path: Path) -> None:
    done = perdure_cli(tmp_path, "runs", "show", "missing", "--json", check=False)
    assert done.returncode == 1
    error = as_json(done)["error"]
    assert error["type"] == "RunNotFound"
    assert "missing" in error["message"]
