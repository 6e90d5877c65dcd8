"""OpenTelemetry traces across processes: the code that triggers a run is traced; a worker is
killed (SIGKILL) between the run's two steps and another resumes it; every span — the trigger's,
both workers' — is exported as it ends (the SDK's own exporter, to a file) and read back: one
trace holds both steps, the execution that resumed says the one before was lost, a child run is
a child span of its parent's execution. A process without a tracer provider makes no span."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import perdure

from .conftest import ROOT, WorkerProcess

TRIGGER = """
import asyncio, sys
from opentelemetry import trace
from tests import traceapp

async def main() -> None:
    with trace.get_tracer("test").start_as_current_span("request"):
        handle = await traceapp.app.get_task(sys.argv[1]).trigger(*sys.argv[2:])
    print(handle.id)
    await traceapp.app.close()

asyncio.run(main())
"""


def trigger(env: dict[str, str], task: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRIGGER, task, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip().splitlines()[-1]


def spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed(trace_file: Path, task: str) -> bool:
    """An execution of a run of `task` ended it completed (by the spans exported so far)."""
    return any(
        s["name"] == f"run {task}" and s["attributes"].get("perdure.run.outcome") == "completed"
        for s in spans(trace_file)
    )


def recorded_steps(database_url: str, run_id: str) -> int:
    async def count() -> int:
        app = perdure.App("traced", database=database_url)
        try:
            return len(await app.store.load_journal(run_id, values=False))
        finally:
            await app.close()

    return asyncio.run(count())


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("waited too long")
        time.sleep(0.05)


@pytest.mark.crash
def test_one_trace_across_a_killed_worker_and_its_successor(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    gate = tmp_path / "gate"
    gate.touch()
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "TRACE_FILE": str(trace_file),
        "TRACE_GATE": str(gate),
    }
    first_worker = WorkerProcess("tests.traceapp:app", env, log=tmp_path / "w1.log")
    worker_processes.append(first_worker)
    run_id = trigger(env, "steps", "k")
    wait_for(lambda: Path(str(gate) + ".reached").exists())
    wait_for(lambda: recorded_steps(database_url, run_id) == 1)  # the first step is durable
    first_worker.kill()  # SIGKILL between the two steps
    gate.unlink()
    worker_processes.append(WorkerProcess("tests.traceapp:app", env, log=tmp_path / "w2.log"))

    wait_for(lambda: completed(trace_file, "steps"), timeout=90)
    found = spans(trace_file)
    (request,) = [s for s in found if s["name"] == "request"]
    trace_id = request["context"]["trace_id"]
    mine = [s for s in found if s["attributes"].get("perdure.run.id") == run_id]
    assert {s["context"]["trace_id"] for s in mine} == {trace_id}  # one trace
    steps = {s["name"]: s for s in mine if s["name"].startswith("step ")}
    assert set(steps) == {"step first", "step second"}  # both, each once (the first replayed)
    executions = [s for s in mine if s["name"] == "run steps"]
    (resumed,) = executions  # the killed execution never ended: it exported nothing
    assert resumed["parent_id"] == request["context"]["span_id"]
    lost = resumed["attributes"]["perdure.run.resumed_after"]  # why it ran again: the kill
    assert lost.startswith("requeued: worker ")
    assert " died (" in lost
    assert [e["name"] for e in resumed["events"]] == ["previous execution lost"]
    assert resumed["attributes"]["perdure.run.execution"] >= 2
    # the first step ran in the killed execution (its parent, that execution's span, was never
    # exported); the second ran again in the one that resumed (the killed attempt of it never
    # ended: no span)
    assert steps["step first"]["parent_id"] != resumed["context"]["span_id"]
    assert steps["step first"]["attributes"]["perdure.step.outcome"] == "completed"
    assert steps["step second"]["parent_id"] == resumed["context"]["span_id"]
    assert steps["step second"]["attributes"]["perdure.step.stored_in"] == "inline"
    assert run_id


def test_a_child_run_is_a_child_span_of_its_parent(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "TRACE_FILE": str(trace_file),
    }
    worker_processes.append(WorkerProcess("tests.traceapp:app", env, log=tmp_path / "w.log"))
    trigger(env, "parent", "4")

    wait_for(lambda: completed(trace_file, "parent"), timeout=60)
    found = spans(trace_file)
    (request,) = [s for s in found if s["name"] == "request"]
    runs = [s for s in found if s["name"] in ("run parent", "run child")]
    assert {s["context"]["trace_id"] for s in runs} == {request["context"]["trace_id"]}
    parents = [s for s in runs if s["name"] == "run parent"]
    (child,) = [s for s in runs if s["name"] == "run child"]
    # the parent's first execution triggered the child and suspended to wait for it
    assert child["parent_id"] in {s["context"]["span_id"] for s in parents}
    assert [s["attributes"]["perdure.run.outcome"] for s in parents] == ["waiting", "completed"]
    (double,) = [s for s in found if s["name"] == "step double"]  # in the sync child's thread
    assert double["parent_id"] == child["context"]["span_id"]
    waits = [s for s in found if s["name"].startswith("wait ")]
    assert waits == []  # (a child is awaited through the journal, not a wait of a kind)


def test_no_tracer_provider_no_spans_and_no_context(tmp_path: Path) -> None:
    script = (
        "import asyncio, perdure\n"
        "from perdure import tracing\n"
        "app = perdure.App('plain')\n"
        "@app.task\n"
        "async def job() -> int:\n"
        "    return 1\n"
        "async def main() -> None:\n"
        "    h = await job.trigger()\n"
        "    assert not tracing.enabled()\n"
        "    assert (await app.store.get_run(h.id)).trace_context is None\n"
        "    await app.close()\n"
        "asyncio.run(main())\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
