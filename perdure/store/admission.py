"""Which claimable runs may start now: the limits of flow control, decided in one place for
every store.

A store hands `admit` the claimable candidates in claim order, the runs running now and the
recent starts, all read inside the transaction that then claims what `admit` picked (SQLite: its
single writer; PostgreSQL: under the app's claim lock), so no two claims can both take the last
slot of a limit.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from perdure.records import QueueConfig

Row = Mapping[str, Any]

CANDIDATE_SCAN = 200
"""Candidates read per claim beyond the slots to fill: runs held back by a limit are skipped,
and concurrency keys take turns, so a few hundred reach past one crowded key."""


class Turns:
    """Which queue and concurrency key this process served last: among candidates of the same
    turn, the key served longest ago goes first, so keys take turns over successive claims
    (a busy key whose next run is older does not win every time)."""

    _LIMIT = 10_000

    def __init__(self) -> None:
        self._served: OrderedDict[tuple[str, str | None], int] = OrderedDict()
        self._clock = 0

    def last(self, group: tuple[str, str | None]) -> int:
        """When `group` was last served (0: never, or long ago)."""
        return self._served.get(group, 0)

    def serve(self, group: tuple[str, str | None]) -> None:
        """`group` was served now."""
        self._clock += 1
        self._served[group] = self._clock
        self._served.move_to_end(group)
        while len(self._served) > self._LIMIT:
            self._served.popitem(last=False)


CANCEL_NEWEST_NOTE = "cancelled: its queue was full (cancel-newest)"


def limits_apply(queues: Mapping[str, QueueConfig], task_limits: Mapping[str, int]) -> bool:
    """True when some limit may hold a run back: the claim must go through `admit`."""
    return bool(task_limits) or any(q.limited for q in queues.values())


def rate_window(queues: Mapping[str, QueueConfig]) -> float:
    """Seconds of recent starts `admit` needs to see: the longest rate period (0: none)."""
    return max((q.rate_period or 0.0 for q in queues.values()), default=0.0)


@dataclass(slots=True)
class Admission:
    """What a claim does."""

    claim: list[str] = field(default_factory=list)
    """Runs to lease, in order."""
    cancel: list[str] = field(default_factory=list)
    """Queued runs cancelled by a cancel-newest strategy."""
    cancel_running: list[str] = field(default_factory=list)
    """Running runs asked to cancel by a cancel-in-progress strategy."""
    retry_at: float | None = None
    """When a rate-limited run may start."""

    def cancellations(self, now: float) -> list[tuple[str, list[str], dict[str, Any]]]:
        """What the strategies cancel, as (query name, run ids, other parameters)."""
        out: list[tuple[str, list[str], dict[str, Any]]] = []
        if self.cancel:
            out.append(("cancel_queued_ids", self.cancel, {"now": now, "note": CANCEL_NEWEST_NOTE}))
        if self.cancel_running:
            out.append(("request_cancel_ids", self.cancel_running, {"now": now}))
        return out


def admit(
    candidates: Iterable[Row],
    running: Iterable[Row],
    starts: Iterable[Row],
    queues: Mapping[str, QueueConfig],
    task_limits: Mapping[str, int],
    limit: int,
    now: float,
    turns: Turns | None = None,
) -> Admission:
    """Pick up to `limit` of `candidates` (rows: id, task, queue, concurrency_key,
    started_at, turn; in claim order; expired runs already taken out) that fit every limit, given
    the `running` runs (id, task, queue, concurrency_key) and the `starts` (queue,
    concurrency_key, started_at) inside the longest rate window."""
    out = Admission()
    by_queue: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    by_key: Counter[tuple[str, str]] = Counter()
    running_ids: dict[tuple[str, str | None], list[str]] = {}
    for row in running:
        by_queue[row["queue"]] += 1
        by_task[row["task"]] += 1
        if row["concurrency_key"] is not None:
            by_key[(row["queue"], row["concurrency_key"])] += 1
        running_ids.setdefault((row["queue"], row["concurrency_key"]), []).append(row["id"])
    windows: dict[tuple[str, str | None], list[float]] = {}
    for row in starts:
        config = queues.get(row["queue"])
        if config is None or config.rate_limit is None or config.rate_period is None:
            continue
        if row["started_at"] <= now - config.rate_period:
            continue
        key = row["concurrency_key"] if config.rate_by_key else None
        windows.setdefault((row["queue"], key), []).append(row["started_at"])
    for times in windows.values():
        times.sort()
    asked_to_cancel: set[tuple[str, str | None]] = set()
    turns = turns or Turns()
    ordered = sorted(
        candidates,  # already in (turn, priority, age) order: the sort keeps it among equals
        key=lambda row: (row["turn"], turns.last((row["queue"], row["concurrency_key"]))),
    )

    for row in ordered:
        if len(out.claim) >= limit:
            break
        queue, task, key = row["queue"], row["task"], row["concurrency_key"]
        config = queues.get(queue)
        task_limit = task_limits.get(task)
        if task_limit is not None and by_task[task] >= task_limit:
            continue
        if config is not None:
            if config.paused:
                continue
            group: tuple[str, str | None] | None = None
            if config.concurrency is not None and by_queue[queue] >= config.concurrency:
                group = (queue, None)
            elif (
                key is not None
                and config.key_concurrency is not None
                and by_key[(queue, key)] >= config.key_concurrency
            ):
                group = (queue, key)
            if group is not None:
                _on_full(config, group, row, running_ids, asked_to_cancel, out)
                continue
            window: list[float] | None = None
            if config.rate_limit is not None and config.rate_period and row["started_at"] is None:
                window = windows.setdefault((queue, key if config.rate_by_key else None), [])
                if len(window) >= config.rate_limit:
                    free_at = window[len(window) - config.rate_limit] + config.rate_period
                    out.retry_at = free_at if out.retry_at is None else min(out.retry_at, free_at)
                    continue
            if window is not None:
                bisect.insort(window, now)
        out.claim.append(row["id"])
        turns.serve((queue, key))
        by_queue[queue] += 1
        by_task[task] += 1
        if key is not None:
            by_key[(queue, key)] += 1
    return out


def _on_full(
    config: QueueConfig,
    group: tuple[str, str | None],
    row: Row,
    running_ids: dict[tuple[str, str | None], list[str]],
    asked: set[tuple[str, str | None]],
    out: Admission,
) -> None:
    """A candidate that does not fit: wait, or apply the queue's strategy."""
    if config.strategy == "cancel-newest":
        if row["started_at"] is None:  # a run that already started is never cancelled here
            out.cancel.append(row["id"])
    elif config.strategy == "cancel-in-progress" and group not in asked:
        asked.add(group)
        queue, key = group
        for (q, k), ids in running_ids.items():
            if q == queue and (key is None or k == key):
                out.cancel_running.extend(ids)
