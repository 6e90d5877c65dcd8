"""The chaos harness: worker processes killed with SIGKILL at random while runs progress, then
every guarantee checked from the side effects on disk and the journal.

Used by tests/chaos/test_chaos.py (bounded, in CI) and by `scripts/chaos` (any size).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import perdure
from perdure.store.base import EntryKind, RunStatus

from .. import crashapp
from ..conftest import WorkerProcess


@dataclass
class ChaosReport:
    """What a chaos run did and what it found."""

    runs: int
    steps: int
    workers: int
    kills: int = 0
    seconds: float = 0.0
    completed: int = 0
    lost: int = 0
    double_completions: int = 0
    reexecuted_recorded_steps: int = 0
    interrupted_steps_rerun: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no guarantee was broken."""
        return not (self.lost or self.double_completions or self.reexecuted_recorded_steps)

    def figures(self) -> dict[str, object]:
        """The report as plain data."""
        return {**asdict(self), "ok": self.ok}


async def run_chaos(
    database: str,
    workdir: Path,
    *,
    runs: int = 200,
    steps: int = 5,
    workers: int = 3,
    seconds: float = 30.0,
    kill_every: tuple[float, float] = (0.3, 1.0),
    step_delay: float = 0.2,
    seed: int = 20261125,
) -> ChaosReport:
    """Trigger `runs` runs, kill a random worker every `kill_every` seconds for `seconds`,
    restart it each time, drain, and check every run."""
    log = workdir / "side-effects.log"
    app = perdure.App("crash", database=database, blobs=f"file://{workdir}/blobs")
    app.task(name="pipeline")(crashapp.pipeline.fn)
    env = {
        "PERDURE_DATABASE_URL": database,
        "PERDURE_BLOB_URL": app.blobs,
        "CRASH_LOG": str(log),
    }
    report = ChaosReport(runs=runs, steps=steps, workers=workers)
    rng = random.Random(seed)
    task = app.get_task("pipeline")
    handles = [await task.trigger(f"c{i}", steps, step_delay) for i in range(runs)]
    started = time.monotonic()
    procs = [
        WorkerProcess("tests.crashapp:app", env, log=workdir / f"worker-{n}.log")
        for n in range(workers)
    ]
    try:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(rng.uniform(*kill_every))
            slot = rng.randrange(workers)
            procs[slot].kill()
            report.kills += 1
            procs[slot] = WorkerProcess(
                "tests.crashapp:app", env, log=workdir / f"worker-{slot}-{report.kills}.log"
            )
        for handle in handles:
            await handle.result(timeout=max(60.0, runs * steps * step_delay))
    finally:
        for proc in procs:
            proc.terminate(timeout=60)
    report.seconds = time.monotonic() - started
    await check(app, handles, log, report)
    await app.close()
    return report


async def check(
    app: perdure.App, handles: list[perdure.RunHandle[list[str]]], log: Path, report: ChaosReport
) -> None:
    """Count lost runs, double completions and recorded steps that ran again."""
    starts = step_starts(log)
    store = app.store
    for i, handle in enumerate(handles):
        key = f"c{i}"
        run = await store.get_run(handle.id)
        if run.status is not RunStatus.COMPLETED:
            report.lost += 1
            report.problems.append(f"run {handle.id} ended {run.status}")
            continue
        report.completed += 1
        completions = [
            a for a in await store.load_attempts(handle.id) if a.seq == 0 and a.error is None
        ]
        if len(completions) != 1:
            report.double_completions += 1
            report.problems.append(f"run {handle.id} completed {len(completions)} times")
        for entry in await store.load_journal(handle.id):
            if entry.kind is not EntryKind.STEP:
                continue
            times = starts.get((key, entry.seq), [])
            late = [t for t in times if t >= entry.finished_at]
            if late:
                report.reexecuted_recorded_steps += len(late)
                report.problems.append(f"run {handle.id} step {entry.seq} ran after its record")
            report.interrupted_steps_rerun += max(0, len(times) - 1 - len(late))


def step_starts(log: Path) -> dict[tuple[str, int], list[float]]:
    """When each (run key, step) started, from the side-effect log."""
    starts: dict[tuple[str, int], list[float]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "start":
            starts.setdefault((parts[1], int(parts[2])), []).append(float(parts[3]))
    return starts
