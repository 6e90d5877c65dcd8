"""Statistics of runs, written once for both dialects (the part of SQLStore they make): counts
by status of the runs active now and of those that ended in a window, duration percentiles and
throughput. Ended runs are read from the index of ended runs alone (schema 10)."""

from __future__ import annotations

from perdure.stats_records import PERCENTILES, RunStats, TaskStats
from perdure.store.connector import Batch, Connector, Operation, Query, Result
from perdure.store.rows import RowMapping

MAX_BUCKETS = 500
"""Throughput buckets at most: a wider window gets wider buckets."""


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
        params = {"since": since, "app": app, "task": task, "bucket": bucket}

        def read() -> Operation[list[Result]]:
            results: list[Result] = yield Batch(
                Query(name, params)
                for name in ("stats_active", "stats_ended", "stats_durations", "stats_throughput")
            )
            return results

        active, ended, durations, throughput = await self.db.read(read, "run_stats")
        by_task: dict[str, TaskStats] = {}

        def of(name: str) -> TaskStats:
            return by_task.setdefault(name, TaskStats(name))

        for row in active.rows:
            of(row["task"]).active[row["status"]] = int(row["n"])
        for row in ended.rows:
            of(row["task"]).ended[row["status"]] = int(row["n"])
        for row in durations.rows:
            n, rank = int(row["n"]), int(row["rn"])
            for p in PERCENTILES:
                if rank == -(-n * p // 100):  # ceil(n * p / 100), as the query
                    of(row["task"]).durations[p] = float(row["duration"])
        completed, failed = [0] * buckets, [0] * buckets
        for row in throughput.rows:  # one that ended at the very end: in the last bucket
            i = min(int(row["bucket"]), buckets - 1)
            completed[i] += int(row["completed"] or 0)
            failed[i] += int(row["failed"] or 0)
        series = [(since + i * bucket, completed[i], failed[i]) for i in range(buckets)]
        tasks = [by_task[name] for name in sorted(by_task)]
        return RunStats(since=since, until=until, tasks=tasks, bucket=bucket, throughput=series)
