"""What `Store.run_stats` answers: how an App's runs are doing now and over a window of time —
the figures of `perdure stats`, the API's /stats and the dashboard's overview, computed once."""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLE = 1000
"""Runs (the latest to end in the window, over every task) whose journals the step figures of
the statistics are read from: enough for tight percentiles, bounded at any size of history."""
PERCENTILES = (50, 95, 99)
"""The duration percentiles reported: the nearest rank (the smallest duration that at least p%
of the window's runs took no longer than), within 1.2% (see store/stats.py)."""


@dataclass(frozen=True, slots=True)
class TaskStats:
    """One task's runs: those active now, those that ended in the window."""

    task: str
    """Task name."""
    active: dict[str, int] = field(default_factory=dict)
    """Runs queued, running or waiting now, by status."""
    ended: dict[str, int] = field(default_factory=dict)
    """Runs that ended in the window, by status (completed, failed, cancelled, expired)."""
    durations: dict[int, float] = field(default_factory=dict)
    """Percentile (50, 95, 99) -> seconds from a run's start to its end, over the runs that
    ended in the window after starting (none when none did)."""
    sampled: int = 0
    """Of its runs that ended in the window, how many the step figures below were read from:
    the latest (see SAMPLE); all of them when there are no more."""
    step_durations: dict[int, float] = field(default_factory=dict)
    """Percentile -> seconds of its step calls (first attempt's start to the end, retries
    included), exactly over the sampled runs' steps."""
    retry_rate: float | None = None
    """Retries per step call over the sampled runs (0.5: one retry every other call)."""
    steps_per_minute: float | None = None
    """Steps its runs took per minute over the window (the sampled runs' steps per run, times
    its runs that ended in the window, over the window's minutes)."""
    stored_bytes: int | None = None
    """Bytes its runs that ended in the window keep (steps' values and results, as stored:
    compressed, encrypted), from the sampled runs per run."""


@dataclass(frozen=True, slots=True)
class RunStats:
    """An App's runs (or every app's), by task."""

    since: float
    """Start of the window (POSIX seconds)."""
    until: float
    """End of the window: when the figures were read."""
    tasks: list[TaskStats]
    """Per task, by name."""
    bucket: float
    """Width of a throughput bucket, in seconds."""
    throughput: list[tuple[float, int, int]]
    """(bucket start, runs completed, runs failed) over the window, oldest first, every bucket
    present (zeros where nothing ended)."""

    def total(self, status: str) -> int:
        """Runs in `status` over every task: active now, or ended in the window."""
        return sum(t.active.get(status, 0) + t.ended.get(status, 0) for t in self.tasks)
