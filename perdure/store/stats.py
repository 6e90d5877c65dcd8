"""Statistics of runs, written once for both dialects (the part of SQLStore they make): counts
by status of the runs active now and of those that ended in a window, duration percentiles and
throughput. Ended runs are read from the index of ended runs alone (schema 10), twice: once for
counts and durations together, once for throughput; the step figures from the journals of the
latest runs (a bounded read); the three on connections of their own, at once.

Durations are counted in a histogram of logarithmic buckets, so a window of any length costs
one pass and no sort: a percentile is the middle of the bucket that holds the nearest-rank
duration, within ±1.2% of it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from perdure.stats_records import PERCENTILES, SAMPLE, RunStats, TaskStats
from perdure.store.connector import Batch, Operation, Query, Result, Row
from perdure.store.rows import Operations

MAX_BUCKETS = 500
"""Throughput buckets at most: a wider window gets wider buckets."""
SCALE = 43.4
"""Duration buckets per unit of natural log: each is e^(1/43.4) ≈ 2.33% wide."""


class StatsOperations(Operations):
    """Run statistics over `db`."""

    async def run_stats(
        self,
        *,
        since: float,
        app: str | None = None,
        task: str | None = None,
        buckets: int = 60,
    ) -> RunStats:
        until = self.now()
        if since >= until:
            raise ValueError("the window of statistics must start in the past")
        buckets = max(1, min(buckets, MAX_BUCKETS))
        bucket = (until - since) / buckets
        params = {
            "since": since,
            "app": app,
            "task": task,
            "bucket": bucket,
            "scale": SCALE,
            "sample": SAMPLE,
        }

        def now_and_throughput() -> Operation[list[Result]]:
            results: list[Result] = yield Batch(
                [Query("stats_active", params), Query("stats_throughput", params)]
            )
            return results

        def one(name: str) -> Callable[[], Operation[Result]]:
            def read() -> Operation[Result]:
                result: Result = yield Query(name, params)
                return result

            return read

        (active, throughput), histogram, sample = await asyncio.gather(
            self.db.read(now_and_throughput, "run_stats"),
            self.db.read(one("stats_ended"), "run_stats"),
            self.db.read(one("stats_step_sample"), "run_stats"),
        )
        by_task: dict[str, TaskStats] = {}

        def of(name: str) -> TaskStats:
            return by_task.setdefault(name, TaskStats(name))

        for row in active.rows:
            of(row["task"]).active[row["status"]] = int(row["n"])
        durations: dict[str, dict[int, int]] = {}
        for row in histogram.rows:
            stats, n = of(row["task"]), int(row["n"])
            stats.ended[row["status"]] = stats.ended.get(row["status"], 0) + n
            if row["bucket"] is not None:
                counts = durations.setdefault(row["task"], {})
                counts[int(row["bucket"])] = counts.get(int(row["bucket"]), 0) + n
        for name, counts in durations.items():
            by_task[name].durations.update(_percentiles(counts))
        minutes = (until - since) / 60
        for name, rows in _by_task(sample.rows).items():
            by_task[name] = _with_steps(of(name), rows, minutes)
        completed, failed = [0] * buckets, [0] * buckets
        for row in throughput.rows:  # one that ended at the very end: in the last bucket
            i = min(int(row["bucket"]), buckets - 1)
            completed[i] += int(row["completed"] or 0)
            failed[i] += int(row["failed"] or 0)
        series = [(since + i * bucket, completed[i], failed[i]) for i in range(buckets)]
        tasks = [by_task[name] for name in sorted(by_task)]
        return RunStats(since=since, until=until, tasks=tasks, bucket=bucket, throughput=series)


def _by_task(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row["task"], []).append(row)
    return out


def _with_steps(stats: TaskStats, rows: list[Row], minutes: float) -> TaskStats:
    """`stats` with the step figures of its sampled runs' rows (see stats_step_sample)."""
    runs = {row["run_id"] for row in rows}
    results: dict[str, int] = {}
    steps = [row for row in rows if not row["failed"] and row["duration"] is not None]
    failed_attempts = sum(1 for row in rows if row["failed"])
    failed_steps = sum(1 for row in steps if row["status"] == "failed")
    for row in rows:
        if not row["failed"]:
            results[row["run_id"]] = int(row["result_size"] or 0)
    stored = sum(int(row["stored_size"] or 0) for row in steps) + sum(results.values())
    ended = sum(stats.ended.values())
    durations = sorted(float(row["duration"]) for row in steps)
    return replace(
        stats,
        sampled=len(runs),
        step_durations={p: durations[_rank(len(durations), p) - 1] for p in PERCENTILES}
        if durations
        else {},
        retry_rate=(failed_attempts - failed_steps) / len(steps) if steps else None,
        steps_per_minute=len(steps) / len(runs) * ended / minutes,
        stored_bytes=round(stored / len(runs) * ended),
    )


def _rank(n: int, p: int) -> int:
    """The nearest rank of percentile `p` among `n` values: ceil(n * p / 100), from 1."""
    return -(-n * p // 100)


def _percentiles(counts: dict[int, int]) -> dict[int, float]:
    """Percentile -> seconds, from a histogram of durations (bucket -> runs): the geometric
    middle of the bucket holding the k-th shortest run, k = ceil(n * p / 100)."""
    n = sum(counts.values())
    found: dict[int, float] = {}
    seen = 0
    wanted = sorted((_rank(n, p), p) for p in PERCENTILES)
    for bucket in sorted(counts):
        seen += counts[bucket]
        while wanted and wanted[0][0] <= seen:
            found[wanted.pop(0)[1]] = math.exp((bucket + 0.5) / SCALE)
    return found
