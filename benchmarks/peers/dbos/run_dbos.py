"""The benchmark workloads on DBOS (the reference peer), run in DBOS's own virtualenv.

    python run_dbos.py --workload W1 --database sqlite:///path.db [--quick]

Prints one JSON object per metric, with the same workload and metric names as perdure's
harness (benchmarks/run.py), so every figure gets a ratio. DBOS is a process-wide singleton,
so the harness runs each workload in a fresh process. W3 re-runs this file as the crashing and
the recovering process (--role).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig

W4_SIZE = 8 * 1024 * 1024
Metric = dict[str, Any]


QUEUES = {"w1": 50, "children": None}  # name -> concurrency


def launch(database: str, name: str = "bench") -> None:
    config: DBOSConfig = {"name": name, "system_database_url": database}
    DBOS(config=config)
    DBOS.launch()
    for queue, concurrency in QUEUES.items():
        DBOS.register_queue(queue, concurrency=concurrency)


# -- workloads ---------------------------------------------------------------------------------


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def three(i: int) -> int:
    return noop(i) + noop(i) + noop(i)


def w1(database: str, quick: bool) -> list[Metric]:
    runs = 200 if quick else 500
    launch(database)
    start = time.perf_counter()
    handles = [DBOS.enqueue_workflow("w1", three, i) for i in range(runs)]
    for handle in handles:
        handle.get_result()
    seconds = time.perf_counter() - start
    return [{"workload": "W1", "metric": "runs_per_s", "value": runs / seconds, "runs": runs}]


@DBOS.step()
def inc(i: int) -> int:
    return i + 1


@DBOS.workflow()
def chain(steps: int) -> int:
    value = 0
    for _ in range(steps):
        value = inc(value)
    return value


def w2(database: str, quick: bool) -> list[Metric]:
    steps = 200
    launch(database)
    chain(5)  # warm up
    start = time.perf_counter()
    assert chain(steps) == steps
    seconds = time.perf_counter() - start
    return [{"workload": "W2", "metric": "ms_per_step", "value": seconds * 1000 / steps}]


@DBOS.step()
def crash_step(index: int) -> int:
    log = Path(os.environ["W3_LOG"])
    with log.open("a") as f:
        f.write(f"start {index}\n")
    while index >= 3 and Path(os.environ["W3_GATE"]).exists():
        time.sleep(0.01)
    with log.open("a") as f:
        f.write(f"done {index}\n")
    return index


@DBOS.workflow()
def crashing(steps: int) -> int:
    return sum(crash_step(i) for i in range(1, steps + 1))


def w3(database: str, quick: bool) -> list[Metric]:
    workdir = Path(os.environ["W3_DIR"])
    log, gate = workdir / "side-effects.log", workdir / "gate"
    env = {**os.environ, "W3_LOG": str(log), "W3_GATE": str(gate)}
    gate.touch()
    cmd = [sys.executable, __file__, "--workload", "W3", "--database", database, "--role"]
    first = subprocess.Popen([*cmd, "start"], env=env)
    deadline = time.monotonic() + 120
    while "start 3" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline:
            first.kill()
            raise RuntimeError("the DBOS workflow never reached step 3")
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    gate.unlink()
    restarted = time.perf_counter()
    done = subprocess.run([*cmd, "recover"], env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - restarted
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"result": 15}
    starts = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]
    reexecuted = sum(starts.count(str(i)) - 1 for i in (1, 2))
    return [
        {"workload": "W3", "metric": "completed_steps_reexecuted", "value": reexecuted},
        {"workload": "W3", "metric": "restart_to_completion_s", "value": seconds},
    ]


def w3_role(database: str, role: str) -> None:
    launch(database, name="bench-w3")  # launching recovers the killed process's workflow
    if role == "start":
        DBOS.start_workflow(crashing, 5)
        while True:
            time.sleep(1)
    while True:
        for status in DBOS.list_workflows(name="crashing"):
            if status.status == "SUCCESS":
                print(
                    json.dumps({"result": DBOS.retrieve_workflow(status.workflow_id).get_result()})
                )
                return
        time.sleep(0.01)


@DBOS.step()
def big(i: int) -> bytes:
    return os.urandom(W4_SIZE)


@DBOS.workflow()
def bigs(steps: int) -> int:
    return sum(len(big(i)) for i in range(steps))


def w4(database: str, quick: bool) -> list[Metric]:
    steps = 3
    launch(database)
    bigs(1)  # warm up
    start = time.perf_counter()
    assert bigs(steps) == steps * W4_SIZE
    seconds = time.perf_counter() - start
    return [{"workload": "W4", "metric": "ms_per_step", "value": seconds * 1000 / steps}]


@DBOS.workflow()
def single(i: int) -> int:
    return noop(i)


def w5(database: str, quick: bool) -> list[Metric]:
    runs = 100
    launch(database)
    latencies = []
    for i in range(runs + 5):
        start = time.perf_counter()
        DBOS.start_workflow(single, i).get_result()
        if i >= 5:
            latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    return [
        {"workload": "W5", "metric": "p50_ms", "value": statistics.median(latencies)},
        {"workload": "W5", "metric": "p95_ms", "value": latencies[int(0.95 * len(latencies)) - 1]},
    ]


@DBOS.workflow()
def child(i: int) -> int:
    return i


@DBOS.workflow()
def parent(count: int) -> int:
    handles = [DBOS.enqueue_workflow("children", child, i) for i in range(count)]
    return sum(h.get_result() for h in handles)


def fanout(database: str, quick: bool) -> list[Metric]:
    count = 1000
    launch(database)
    start = time.perf_counter()
    assert parent(count) == sum(range(count))
    seconds = time.perf_counter() - start
    return [{"workload": "FANOUT", "metric": "seconds", "value": seconds, "children": count}]


@DBOS.workflow()
def nap(wake_at: float) -> float:
    DBOS.sleep(wake_at - time.time())
    return time.time()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sleep_10k(database: str, quick: bool) -> list[Metric]:
    runs = 1000 if quick else 10_000
    launch(database)
    started = time.perf_counter()
    wake_at = time.time() + (30.0 if quick else 120.0)  # DBOS starts ~200 workflows/s here
    handles = [DBOS.start_workflow(nap, wake_at) for _ in range(runs)]
    start_seconds = time.perf_counter() - started
    time.sleep(max(0.0, wake_at - time.time() - 1.0))
    sleeping_rss = rss_mb()
    lags = sorted(h.get_result() - wake_at for h in handles)
    return [
        {"workload": "SLEEP10K", "metric": "rss_mb", "value": sleeping_rss, "runs": runs},
        {"workload": "SLEEP10K", "metric": "wake_lag_p50_s", "value": statistics.median(lags)},
        {
            "workload": "SLEEP10K",
            "metric": "wake_lag_p95_s",
            "value": lags[int(0.95 * len(lags)) - 1],
        },
        {"workload": "SLEEP10K", "metric": "start_s", "value": start_seconds},
    ]


@DBOS.workflow()
async def hold() -> float:
    await DBOS.recv_async("go", timeout_seconds=3600)
    return time.time()


async def _wait_tokens(runs: int, samples: int) -> list[Metric]:
    await asyncio.sleep(0.5)
    idle = rss_mb()
    started = time.perf_counter()
    handles = [await DBOS.start_workflow_async(hold) for _ in range(runs)]
    start_seconds = time.perf_counter() - started
    await asyncio.sleep(2.0)  # every workflow reaches its recv
    waiting_rss = rss_mb()
    lags = []
    for handle in handles[:samples]:  # one at a time: DBOS otherwise idle
        sent = time.time()
        await DBOS.send_async(handle.workflow_id, None, topic="go")
        lags.append(await handle.get_result() - sent)
    lags.sort()
    rest = handles[samples:]
    all_started = time.perf_counter()
    for chunk in range(0, len(rest), 500):
        await asyncio.gather(
            *(DBOS.send_async(h.workflow_id, None, topic="go") for h in rest[chunk : chunk + 500])
        )
    for handle in rest:
        await handle.get_result()
    return [
        # DBOS runs workflows in the process that starts them: its memory is the worker's
        {
            "workload": "WAIT",
            "metric": "worker_rss_added_mb",
            "value": waiting_rss - idle,
            "runs": runs,
        },
        {"workload": "WAIT", "metric": "resume_p50_ms", "value": statistics.median(lags) * 1000},
        {
            "workload": "WAIT",
            "metric": "resume_p95_ms",
            "value": lags[int(0.95 * len(lags)) - 1] * 1000,
        },
        {
            "workload": "WAIT",
            "metric": "complete_all_s",
            "value": time.perf_counter() - all_started,
        },
        {"workload": "WAIT", "metric": "start_s", "value": start_seconds},
    ]


def wait_tokens(database: str, quick: bool) -> list[Metric]:
    """WAIT with DBOS's own wait: recv in a workflow, send from outside."""
    launch(database)
    return asyncio.run(_wait_tokens(1000 if quick else 10_000, 200))


WORKLOADS = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "FANOUT": fanout,
    "SLEEP10K": sleep_10k,
    "WAIT": wait_tokens,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role")
    args = parser.parse_args()
    if args.role:
        w3_role(args.database, args.role)
        return 0
    for metric in WORKLOADS[args.workload](args.database, args.quick):
        print(json.dumps({**metric, "peer": "dbos"}), flush=True)
    DBOS.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
