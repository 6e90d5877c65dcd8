"""Statistics of runs, written once for both dialects (the part of SQLStore they make): counts
by status of the runs active now and of those that ended in a window, duration percentiles and
throughput. Ended runs are read from the index of ended runs alone (schema 10), twice at most:
once for counts and durations together, once for throughput, on two connections at once.

Durations are counted in a histogram of logarithmic buckets, so a window of any length costs
one pass and no sort: a percentile is the middle of the bucket that holds the nearest-rank
duration, within ±1.2% of it."""

from __future__ import annotations

import asyncio
import math

from perdure.stats_records import PERCENTILES, RunStats, TaskStats
from perdure.store.connector import Batch, Connector, Operation, Query, Result
from perdure.store.rows import RowMapping

MAX_BUCKETS = 500
"""Throughput buckets at most: a wider window gets wider buckets."""
SCALE = 43.4
"""Duration buckets per unit of natural log: each is e^(1/43.4) ≈ 2.33% wide."""


class StatsOperations(RowMapping):
    """Run statistics over `db`."""

    db: Connector

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
        params = {"since": since, "app": app, "task": task, "bucket": bucket, "scale": SCALE}

        def now_and_throughput() -> Operation[list[Result]]:
            results: list[Result] = yield Batch(
                [Query("stats_active", params), Query("stats_throughput", params)]
            )
            return results

        def ended() -> Operation[Result]:
            result: Result = yield Query("stats_ended", params)
            return result

        (active, throughput), histogram = await asyncio.gather(
            self.db.read(now_and_throughput, "run_stats"), self.db.read(ended, "run_stats")
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
        completed, failed = [0] * buckets, [0] * buckets
        for row in throughput.rows:  # one that ended at the very end: in the last bucket
            i = min(int(row["bucket"]), buckets - 1)
            completed[i] += int(row["completed"] or 0)
            failed[i] += int(row["failed"] or 0)
        series = [(since + i * bucket, completed[i], failed[i]) for i in range(buckets)]
        tasks = [by_task[name] for name in sorted(by_task)]
        return RunStats(since=since, until=until, tasks=tasks, bucket=bucket, throughput=series)


def _percentiles(counts: dict[int, int]) -> dict[int, float]:
    """Percentile -> seconds, from a histogram of durations (bucket -> runs): the geometric
    middle of the bucket holding the k-th shortest run, k = ceil(n * p / 100)."""
    n = sum(counts.values())
    found: dict[int, float] = {}
    seen = 0
    wanted = sorted((-(-n * p // 100), p) for p in PERCENTILES)
    for bucket in sorted(counts):
        seen += counts[bucket]
        while wanted and wanted[0][0] <= seen:
            found[wanted.pop(0)[1]] = math.exp((bucket + 0.5) / SCALE)
    return found
