"""Flow control across worker processes: limits hold over every worker, a fan-in survives the
parent's worker being killed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perdure
from perdure.records import RunStatus

from . import flowapp
from .conftest import WorkerProcess, wait_until


def env_for(database_url: str, tmp_path: Path, log: Path) -> dict[str, str]:
    return {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "FLOW_LOG": str(log),
    }


def read_spans(log: Path) -> dict[str, tuple[float, float]]:
    starts: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    for line in log.read_text().splitlines():
        what, name, at = line.split()
        if what == "start":
            assert name not in starts, f"{name} started twice"
            starts[name] = float(at)
        elif what == "end":
            spans[name] = (starts[name], float(at))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _at, change in events:
        now += change
        most = max(most, now)
    return most


@pytest.fixture
def app_on(database_url: str, tmp_path: Path) -> perdure.App:
    flowapp.app.database = database_url
    flowapp.app.blobs = f"file://{tmp_path}/blobs"
    flowapp.app._store = None
    return flowapp.app


triggers = st.lists(
    st.tuples(
        st.sampled_from(["limited", "solo"]),
        st.sampled_from([None, "k1", "k2", "k3", "k4"]),
        st.integers(min_value=0, max_value=3),  # priority
        st.sampled_from([0.0, 0.0, 0.2, 0.5]),  # delay
    ),
    min_size=6,
    max_size=18,
)


@settings(
    max_examples=int(os.environ.get("PERDURE_TEST_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mix=triggers)
def test_limits_hold_over_three_worker_processes(
    mix: list[tuple[str, str | None, int, float]],
    app_on: perdure.App,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    worker_processes: list[WorkerProcess],
) -> None:
    tmp = tmp_path_factory.mktemp("mix")
    log = tmp / "flow.log"
    log.touch()
    asyncio.run(_run_mix(app_on, mix, database_url, tmp, log, worker_processes))


async def _run_mix(
    app: perdure.App,
    mix: list[tuple[str, str | None, int, float]],
    database_url: str,
    tmp: Path,
    log: Path,
    worker_processes: list[WorkerProcess],
) -> None:
    env = env_for(database_url, tmp, log)
    workers = [
        WorkerProcess("tests.flowapp:app", env, log=tmp / f"worker{i}.log", concurrency=4)
        for i in range(3)
    ]
    worker_processes.extend(workers)
    for worker in workers:  # all three take part from the first trigger
        await asyncio.to_thread(worker.wait_started)
    try:
        await _trigger_and_check(app, mix, log, workers)
    finally:
        for worker in workers:  # hypothesis runs many examples in one test: none may linger
            worker.kill()


async def _trigger_and_check(
    app: perdure.App,
    mix: list[tuple[str, str | None, int, float]],
    log: Path,
    workers: list[WorkerProcess],
) -> None:
    handles, planned = [], {}
    for index, (task, key, priority, delay) in enumerate(mix):
        name = f"{task}-{index}-{key}"
        options: dict[str, object] = {"priority": priority, "delay": delay}
        if key is not None:
            options["concurrency_key"] = key
        earliest = time.time() + delay
        handle = await app.get_task(task).trigger(name, 0.05, **options)
        handles.append(handle)
        planned[name] = (handle, earliest)
    for handle in handles:
        await handle.result(timeout=60)
    for worker in workers:
        assert worker.terminate() == 0
    await app.close()

    spans = read_spans(log)
    assert set(spans) == set(planned), "every run ran exactly once"
    limited = [span for name, span in spans.items() if name.startswith("limited")]
    solo = [span for name, span in spans.items() if name.startswith("solo")]
    assert most_at_once(limited) <= 3, "queue limit"
    assert most_at_once(solo) <= 1, "task limit"
    for key in ("k1", "k2", "k3", "k4"):
        keyed = [s for n, s in spans.items() if n.startswith("limited") and n.endswith(f"-{key}")]
        assert most_at_once(keyed) <= 1, f"key limit of {key}"
    for name, (start, _end) in spans.items():
        # a delayed run never starts early (times taken in the same machine's clock)
        assert start >= planned[name][1] - 0.01, f"{name} started before its delay"


def test_a_fan_in_survives_its_workers_being_killed(
    app_on: perdure.App,
    database_url: str,
    tmp_path: Path,
    worker_processes: list[WorkerProcess],
) -> None:
    log = tmp_path / "flow.log"
    log.touch()
    env = env_for(database_url, tmp_path, log)

    async def scenario() -> None:
        first = WorkerProcess("tests.flowapp:app", env, log=tmp_path / "w1.log", concurrency=8)
        worker_processes.append(first)
        handle = await app_on.get_task("fan_out").trigger(200)

        def leaves_done() -> int:
            return log.read_text().count("leaf ")

        await wait_until(lambda: leaves_done() >= 40, timeout=60)
        first.kill()  # SIGKILL in the middle of the fan-in
        assert leaves_done() < 200
        second = WorkerProcess("tests.flowapp:app", env, log=tmp_path / "w2.log", concurrency=8)
        worker_processes.append(second)
        assert await handle.result(timeout=120) == [i * 2 for i in range(200)]
        assert second.terminate() == 0
        children = await app_on.store.list_runs(task="leaf", limit=1000)
        assert len(children) == 200, "no child was triggered twice"
        assert {c.status for c in children} == {RunStatus.COMPLETED}
        done = [int(line.split()[1]) for line in log.read_text().splitlines()]
        assert set(done) == set(range(200))
        await app_on.close()

    asyncio.run(scenario())
