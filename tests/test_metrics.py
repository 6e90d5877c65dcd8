"""Prometheus metrics: a real worker process serving --metrics-port, scraped over HTTP after a
known workload and parsed with prometheus-client's own parser, on both stores; the server's
/metrics behind a key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import perdure
from perdure import metrics

from .conftest import ROOT, WorkerProcess, running_worker, wait_until
from .served import Served, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_a_worker_exports_what_it_did(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "CRASH_LOG": str(tmp_path / "side-effects.log"),
    }
    port = free_port()
    worker = WorkerProcess(
        "tests.crashapp:app",
        env,
        log=tmp_path / "worker.log",
        concurrency=3,
        args=("--metrics-port", str(port)),
    )
    worker_processes.append(worker)
    app = perdure.App("crash", database=database_url, blobs=env["PERDURE_BLOB_URL"])
    pipeline = app.task(name="pipeline")(_pipeline)
    handles = [await pipeline.trigger(f"m{i}", 3) for i in range(4)]
    for handle in handles:
        assert len(await handle.result(timeout=60)) == 3
    await pipeline.trigger("later", 1, delay=3600)  # queued, not claimable yet

    async def scrape() -> str | None:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            return None

    await wait_until(scrape, timeout=30)
    text = await scrape()
    assert text is not None
    found = samples(text)
    step = {"task": "pipeline", "step": "work"}
    assert value(found, "perdure_step_duration_seconds_count", **step, outcome="completed") == 12
    assert value(found, "perdure_runs_ended_total", task="pipeline", status="completed") == 4
    assert (
        value(found, "perdure_run_duration_seconds_count", task="pipeline", status="completed") == 4
    )
    assert value(found, "perdure_executions_total", task="pipeline", outcome="completed") == 4
    assert value(found, "perdure_runs_claimed_total") == 4
    assert value(found, "perdure_worker_slots") == 3
    assert value(found, "perdure_worker_slots_busy") == 0
    assert value(found, "perdure_result_bytes_total", where="inline") > 0
    assert value(found, "perdure_claim_duration_seconds_count") >= 1
    assert value(found, "perdure_queue_running", app="crash", queue="default") == 0
    assert ("perdure_queue_queued", frozenset({("app", "crash"), ("queue", "default")})) in found
    assert not any("run_id" in dict(labels) for _name, labels in found)  # bounded labels
    dashboard = (ROOT / "deploy" / "grafana" / "perdure.json").read_text()
    charted = {re.sub(r"_(bucket|total)$", "", n) for n in re.findall(r"perdure_\w+", dashboard)}
    exported = {family.name for family in text_string_to_metric_families(text)}
    assert charted <= exported  # the dashboard charts series the worker exports
    await app.close()


async def _pipeline(run_key: str, steps: int, pause: float = 0.0) -> list[str]:
    raise AssertionError("runs in the worker process")  # (registered for its name)


async def test_retries_and_waits_are_counted(make_app: Callable[..., perdure.App]) -> None:
    registry = metrics.enable()
    app = make_app()
    calls = {"n": 0}

    @app.step(name="flaky", retry=perdure.Retry(max_attempts=3, min_timeout=0.01, max_timeout=0.02))
    async def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("again")
        return 1

    @app.task(name="waits")
    async def waits() -> Any:
        await flaky()
        await perdure.sleep(0.05)
        return await perdure.wait_for_token("ok", timeout=0.1)

    before = samples(metrics.exposition()[0].decode())
    async with running_worker(app):
        handle = await waits.trigger()
        await wait_until(lambda: _status_is(app, handle.id, "failed"), timeout=30)
    after = samples(metrics.exposition()[0].decode())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("perdure_step_retries_total", task="waits", step="flaky") == 2
    assert (
        grew("perdure_step_duration_seconds_count", task="waits", step="flaky", outcome="retried")
        == 2
    )
    assert grew("perdure_waits_total", kind="sleep") == 1
    assert grew("perdure_waits_total", kind="token") == 1
    assert grew("perdure_runs_ended_total", task="waits", status="failed") == 1
    assert registry is metrics.enable()
    await app.close()


async def _status_is(app: perdure.App, run_id: str, status: str) -> bool:
    return str((await app.store.get_run(run_id, values=False)).status) == status


async def test_the_server_serves_metrics_behind_a_key(served: Served) -> None:
    async with served.client(None) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
    async with served.client("trigger") as api:  # a run in the default queue, not yet due
        await api.post("/api/v1/tasks/add/trigger", json={"args": [1, 2], "delay": 3600})
    async with served.client("read") as reader:
        response = await reader.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
    default = frozenset({("app", "waits"), ("queue", "default")})
    assert found[("perdure_queue_queued", default)] == 1
    assert found[("perdure_queue_running", default)] == 0


def test_a_name_that_utf_8_cannot_hold_does_not_break_the_exposition() -> None:
    metrics.enable()
    metrics.step_ended("task\ud800", "step\udfff", 0.01, "completed")
    metrics.execution_ended("task\ud800", "completed", 0.5)
    text = metrics.exposition()[0].decode()
    assert 'task="task?"' in text
    assert 'step="step?"' in text
