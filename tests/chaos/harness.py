"""The chaos harness: faults injected at random while runs progress (the nemeses below), then
every guarantee checked from the side effects on disk and the journal.

Nemeses:
- kill: SIGKILL a worker, start another.
- pause: SIGSTOP a worker for longer than the stall time, then SIGCONT (it was declared dead
  meanwhile: it must stop and exit, and is started again).
- clock: start a worker whose clock is 2 h ahead or behind (libfaketime; PostgreSQL only:
  SQLite's processes share their host's clock).
- db-restart / db-crash: a fast restart / an immediate shutdown and start of the database
  (PostgreSQL only, on a private server the caller made: never the shared one).
- disk-full: fill the small filesystem the SQLite database lives on, for a while (SQLite only).

Checks: every run completed (none lost, none left non-ended), none completed twice, no recorded
step ran again, no step of a run started after a later step of that run had started (a worker
that was taken over never goes on), and, with `limited`, the queue's concurrency limit held:
no more runs than the limit recorded a step attempt at the same moment (every recorded attempt
ran while its run held its lease, so the limit bounds them).

Used by tests/chaos/test_chaos.py (bounded, in CI) and by `scripts/chaos` (any size).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import perdure
from perdure.records import EntryKind, RunStatus

from .. import crashapp
from ..conftest import WorkerProcess, faketime_env
from ..pg_private import PrivateCluster

NEMESES = ("kill", "pause", "clock", "db-restart", "db-crash", "disk-full")
HEARTBEAT = 0.5
"""Seconds between the chaos workers' heartbeats: a paused worker is stalled after 1.5 s."""


def applies(nemesis: str, store: str) -> bool:
    """Whether `nemesis` means something on `store`."""
    if nemesis in ("db-restart", "db-crash", "clock"):
        return store == "postgres"
    if nemesis == "disk-full":
        return store == "sqlite"
    return nemesis in NEMESES


def unsupported(nemesis: str, store: str) -> str | None:
    """Why `nemesis` cannot run on `store` on this machine (None: it can)."""
    if nemesis not in NEMESES:
        return f"unknown nemesis {nemesis!r} (known: {', '.join(NEMESES)})"
    if not applies(nemesis, store):
        return "PostgreSQL only" if store == "sqlite" else "SQLite only"
    if nemesis == "clock" and not glob.glob("/usr/lib/*/faketime/libfaketime.so.1"):
        return "libfaketime is not installed (apt-get install faketime)"
    if nemesis == "disk-full" and os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    return None


@dataclass
class ChaosReport:
    """What a chaos run did and what it found."""

    runs: int
    steps: int
    workers: int
    nemeses: list[str] = field(default_factory=lambda: ["kill"])
    faults: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    seconds: float = 0.0
    completed: int = 0
    lost: int = 0
    double_completions: int = 0
    reexecuted_recorded_steps: int = 0
    out_of_order_steps: int = 0
    most_at_once: int = 0
    limit: int | None = None
    interrupted_steps_rerun: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        """Workers killed with SIGKILL."""
        return self.faults.get("kill", 0)

    @property
    def ok(self) -> bool:
        """True when no guarantee was broken."""
        return not (
            self.lost
            or self.double_completions
            or self.reexecuted_recorded_steps
            or self.out_of_order_steps
            or (self.limit is not None and self.most_at_once > self.limit)
        )

    def figures(self) -> dict[str, object]:
        """The report as plain data."""
        return {**asdict(self), "ok": self.ok}


class _Fleet:
    """The worker processes, each started again when it dies or is killed."""

    def __init__(self, spec: str, env: dict[str, str], workdir: Path, count: int) -> None:
        self.spec = spec
        self.env = env
        self.workdir = workdir
        self.started = 0
        self.procs = [self._start() for _ in range(count)]

    def _start(self, extra: dict[str, str] | None = None) -> WorkerProcess:
        self.started += 1
        log = self.workdir / f"worker-{self.started}.log"
        return WorkerProcess(self.spec, {**self.env, **(extra or {})}, log=log)

    def replace(self, slot: int, extra: dict[str, str] | None = None) -> None:
        self.procs[slot].kill()
        self.procs[slot] = self._start(extra)

    def revive(self) -> int:
        """Start again the workers that exited (a worker declared dead exits); how many."""
        revived = 0
        for slot, proc in enumerate(self.procs):
            if proc.proc.poll() is not None:
                self.replace(slot)
                revived += 1
        return revived

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate(timeout=60)


async def run_chaos(
    database: str,
    workdir: Path,
    *,
    runs: int = 200,
    steps: int = 5,
    workers: int = 3,
    seconds: float = 30.0,
    nemeses: tuple[str, ...] = ("kill",),
    cluster: PrivateCluster | None = None,
    disk: Path | None = None,
    fault_every: tuple[float, float] = (0.3, 1.0),
    step_delay: float = 0.2,
    seed: int = 20261125,
    limited: bool = False,
) -> ChaosReport:
    """Trigger `runs` runs, inject a random one of `nemeses` every `fault_every` seconds for
    `seconds` (the database nemeses need the private `cluster` the database lives on,
    disk-full the small filesystem `disk` it lives on), then drain and check every run."""
    log = workdir / "side-effects.log"
    spec = "tests.crashapp:limited" if limited else "tests.crashapp:app"
    app = perdure.App(
        "crash-limited" if limited else "crash", database=database, blobs=f"file://{workdir}/blobs"
    )
    if limited:
        app.queue("limited", concurrency=crashapp.LIMIT)
    app.task(name="pipeline", queue="limited" if limited else "default")(crashapp.pipeline.fn)
    env = {
        "PERDURE_DATABASE_URL": database,
        "PERDURE_BLOB_URL": app.blobs,
        "CRASH_LOG": str(log),
        "PERDURE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    }
    report = ChaosReport(
        runs=runs,
        steps=steps,
        workers=workers,
        nemeses=list(nemeses),
        limit=crashapp.LIMIT if limited else None,
    )
    rng = random.Random(seed)
    task = app.get_task("pipeline")
    handles = [await task.trigger(f"c{i}", steps, step_delay) for i in range(runs)]
    started = time.monotonic()
    fleet = _Fleet(spec, env, workdir, workers)
    try:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(rng.uniform(*fault_every))
            report.restarts += fleet.revive()
            nemesis = rng.choice(nemeses)
            await _inject(nemesis, fleet, rng, cluster, disk)
            report.faults[nemesis] = report.faults.get(nemesis, 0) + 1
        deadline = time.monotonic() + max(120.0, runs * steps * step_delay)
        for handle in handles:
            while time.monotonic() < deadline:  # workers declared dead late are started again
                report.restarts += fleet.revive()
                try:
                    await handle.result(timeout=1.0)
                except perdure.errors.RunTimeout:
                    continue
                except perdure.PerdureError:
                    pass  # counted by check()
                break
    finally:
        fleet.stop()
    report.seconds = time.monotonic() - started
    await check(app, handles, log, report)
    await app.close()
    return report


async def _inject(
    nemesis: str,
    fleet: _Fleet,
    rng: random.Random,
    cluster: PrivateCluster | None,
    disk: Path | None,
) -> None:
    slot = rng.randrange(len(fleet.procs))
    if nemesis == "kill":
        fleet.replace(slot)
    elif nemesis == "pause":
        proc = fleet.procs[slot].proc
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
            await asyncio.sleep(HEARTBEAT * 3 + rng.uniform(0.5, 1.5))  # past the stall time
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
    elif nemesis == "clock":
        fleet.replace(slot, faketime_env(rng.choice(("+2h", "-2h"))))
    elif nemesis in ("db-restart", "db-crash"):
        if cluster is None:
            raise ValueError(f"the {nemesis} nemesis needs a private cluster")
        if nemesis == "db-restart":
            await asyncio.to_thread(cluster.restart, "fast")
        else:
            await asyncio.to_thread(cluster.crash)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(cluster.start)
    elif nemesis == "disk-full":
        if disk is None:
            raise ValueError("the disk-full nemesis needs the small filesystem of the database")
        filler = disk / "filler"
        try:
            await asyncio.to_thread(fill_disk, filler)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        finally:
            filler.unlink(missing_ok=True)
    else:
        raise ValueError(f"unknown nemesis {nemesis!r}")


@contextlib.contextmanager
def chaos_database(store: str, nemeses: tuple[str, ...], workdir: Path) -> Iterator[dict[str, Any]]:
    """Where the runs of a chaos run live: `database` (its URL), with `cluster` (a private
    PostgreSQL server, never the shared one) or `disk` (the small filesystem under the SQLite
    file, for disk-full) when the nemeses need them."""
    if store == "postgres":
        with PrivateCluster() as cluster:
            yield {"database": cluster.url(), "cluster": cluster}
    elif "disk-full" in nemeses:
        with small_disk(workdir / "disk") as disk:
            yield {"database": f"sqlite:///{disk}/perdure.db", "disk": disk}
    else:
        yield {"database": f"sqlite:///{workdir}/perdure.db"}


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int = 64) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `path` for the block (the disk-full nemesis fills
    it); needs root."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill_disk(path: Path) -> None:
    """Write zeros to `path` until its filesystem is full."""
    chunk = bytes(1 << 20)
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):  # down to the last byte that fits
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk[:size])


async def check(
    app: perdure.App, handles: list[perdure.RunHandle[list[str]]], log: Path, report: ChaosReport
) -> None:
    """Count lost runs, double completions, recorded steps that ran again, and steps started
    after a later step of their run."""
    starts = step_starts(log)
    store = app.store
    held: list[tuple[float, float, str]] = []  # recorded step attempts: (start, end, run)
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
        held.extend(
            (a.started_at, a.finished_at, handle.id)
            for a in await store.load_attempts(handle.id)
            if a.seq > 0
        )
        journal = [e for e in await store.load_journal(handle.id) if e.kind is EntryKind.STEP]
        for entry in journal:
            times = starts.get((key, entry.seq), [])
            late = [t for t in times if t >= entry.finished_at]
            if late:
                report.reexecuted_recorded_steps += len(late)
                report.problems.append(f"run {handle.id} step {entry.seq} ran after its record")
            report.interrupted_steps_rerun += max(0, len(times) - 1 - len(late))
        for entry in journal:  # no step starts once a later step of its run has started
            later = [t for e in journal if e.seq > entry.seq for t in starts.get((key, e.seq), [])]
            if later and any(t > min(later) for t in starts.get((key, entry.seq), [])):
                report.out_of_order_steps += 1
                report.problems.append(
                    f"run {handle.id} step {entry.seq} started after a later step had"
                )
    report.most_at_once = most_at_once(held)
    if report.limit is not None and report.most_at_once > report.limit:
        report.problems.append(
            f"{report.most_at_once} runs of a queue limited to {report.limit} ran at once"
        )


def most_at_once(intervals: list[tuple[float, float, str]]) -> int:
    """The most distinct runs inside one of their `intervals` at the same moment (intervals
    that only touch do not overlap; 5 ms are allowed for the clocks' readings)."""
    events = []
    for start, end, run in intervals:
        if end - start > 0.01:
            events.append((start + 0.005, 1, run))
            events.append((end - 0.005, -1, run))
    events.sort(key=lambda e: (e[0], e[1]))  # at one moment, ends before starts
    inside: dict[str, int] = {}
    most = 0
    for _t, change, run in events:
        inside[run] = inside.get(run, 0) + change
        if inside[run] == 0:
            del inside[run]
        most = max(most, len(inside))
    return most


def step_starts(log: Path) -> dict[tuple[str, int], list[float]]:
    """When each (run key, step) started, from the side-effect log."""
    starts: dict[tuple[str, int], list[float]] = {}
    for parts in crashapp.records(log):
        if parts[0] == "start":
            starts.setdefault((parts[1], int(parts[2])), []).append(float(parts[3]))
    return starts
