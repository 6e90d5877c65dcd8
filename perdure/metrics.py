"""Prometheus metrics of workers and the server (prometheus-client, extra `metrics`).

Off until enable() is called — by `perdure worker --metrics-port N` and by the server for its
/metrics —: until then every recording function returns at once, so a process that does not
export metrics pays nothing for them. Labels are bounded by the code (app, task, step, queue,
status, outcome, kind), never a run id.

The figures of runs by queue come from the store when scraped (through `watch_queues`), cached
for a few seconds so that many scrapers cost one read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from perdure.records import QueueStats

CACHE_SECONDS = 5.0
"""How long the store's figures serve scrapes before they are read again."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Histogram buckets of run and step durations, in seconds."""

_on = False
_lock = threading.Lock()
_m: Any = None


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.step_seconds = Histogram(
            "perdure_step_duration_seconds",
            "Time a step's body took, per attempt, by outcome (completed, failed, retried).",
            ["task", "step", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_seconds = Histogram(
            "perdure_run_duration_seconds",
            "Time from a run's first start to its end, by the status it ended in.",
            ["task", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.runs_ended = Counter(
            "perdure_runs_ended_total",
            "Runs ended by this process.",
            ["task", "status"],
            registry=registry,
        )
        self.executions = Counter(
            "perdure_executions_total",
            "Executions of runs by this worker, by how each ended (completed, failed, "
            "cancelled, waiting, released, lost).",
            ["task", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "perdure_step_retries_total",
            "Step attempts that failed and were retried.",
            ["task", "step"],
            registry=registry,
        )
        self.lease_lost = Counter(
            "perdure_lease_lost_total",
            "Runs this worker was running when another worker took them over.",
            registry=registry,
        )
        self.takeovers = Counter(
            "perdure_takeovers_total",
            "Runs of workers no longer alive given back to the queue by this process.",
            registry=registry,
        )
        self.claim_seconds = Histogram(
            "perdure_claim_duration_seconds",
            "Time a claim of runs took.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.claimed = Counter(
            "perdure_runs_claimed_total", "Runs claimed by this worker.", registry=registry
        )
        self.slots_busy = Gauge(
            "perdure_worker_slots_busy", "Runs this worker executes now.", registry=registry
        )
        self.slots = Gauge(
            "perdure_worker_slots", "Runs this worker may execute at once.", registry=registry
        )
        self.stored = Counter(
            "perdure_result_bytes_total",
            "Bytes of step results recorded (encoded, before compression and encryption), by "
            "where they are kept: inline in the database or in the blob store.",
            ["where"],
            registry=registry,
        )
        self.waits = Counter(
            "perdure_waits_total",
            "Waits registered by runs, by kind (token, event, message, sleep, children).",
            ["kind"],
            registry=registry,
        )


def enable() -> Any:
    """Record metrics from now on; the registry they are in. ImportError with what to install
    when prometheus-client is missing."""
    global _on, _m
    with _lock:
        if _m is None:
            try:
                from prometheus_client import CollectorRegistry
            except ImportError:
                raise ImportError(
                    "metrics need prometheus-client: pip install 'perdure[metrics]'"
                ) from None
            _m = _Metrics(CollectorRegistry(auto_describe=True))
        _on = True
        return _m.registry


_queues: dict[str, Any] = {"at": -CACHE_SECONDS, "rows": [], "read": None, "watched": False}


def watch_queues(read: Callable[[], list[QueueStats]] | None = None) -> None:
    """Export runs by queue: read by `read()` when scraped and stale (at most every
    CACHE_SECONDS), or, without `read`, as last given to queues_read()."""
    from prometheus_client.core import GaugeMetricFamily

    registry = enable()
    with _lock:
        _queues["read"] = read
        if _queues["watched"]:
            return
        _queues["watched"] = True

    class Queues:
        def describe(self) -> Any:
            return families([])  # (without a read: registering must not reach the store)

        def collect(self) -> Any:
            reader = _queues["read"]
            if reader is not None and queues_stale():
                queues_read(reader())
            return families(_queues["rows"])

    def families(queues: list[QueueStats]) -> list[Any]:
        running = GaugeMetricFamily(
            "perdure_queue_running", "Runs running now, by queue.", labels=["app", "queue"]
        )
        queued = GaugeMetricFamily(
            "perdure_queue_queued",
            "Runs waiting to start or resume now, by queue.",
            labels=["app", "queue"],
        )
        oldest = GaugeMetricFamily(
            "perdure_queue_oldest_wait_seconds",
            "How long the longest-waiting claimable run has waited, by queue.",
            labels=["app", "queue"],
        )
        now = time.time()
        for q in queues:
            labels = [_label(q.app), _label(q.config.name)]
            running.add_metric(labels, q.running)
            queued.add_metric(labels, q.queued)
            since = q.oldest_waiting_at
            oldest.add_metric(labels, max(0.0, now - since) if since else 0.0)
        return [running, queued, oldest]

    registry.register(Queues())


def queues_stale() -> bool:
    """True when the figures of runs by queue are older than CACHE_SECONDS."""
    return bool(time.monotonic() - _queues["at"] >= CACHE_SECONDS)


def queues_read(queues: list[QueueStats]) -> None:
    """The figures of runs by queue, as just read from the store (Admin.queues)."""
    _queues["rows"], _queues["at"] = queues, time.monotonic()


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(enable()), CONTENT_TYPE_LATEST


def _label(text: str) -> str:
    """A label value the exposition can encode (a name may hold a lone surrogate)."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def step_ended(task: str, step: str, seconds: float, outcome: str) -> None:
    if _on:
        task, step = _label(task), _label(step)
        _m.step_seconds.labels(task, step, outcome).observe(seconds)
        if outcome == "retried":
            _m.retries.labels(task, step).inc()


def execution_ended(task: str, outcome: str, run_seconds: float | None = None) -> None:
    """An execution of a run ended; `run_seconds` when it ended the run (first start to end)."""
    if _on:
        task = _label(task)
        _m.executions.labels(task, outcome).inc()
        if run_seconds is not None:
            _m.run_seconds.labels(task, outcome).observe(run_seconds)
            _m.runs_ended.labels(task, outcome).inc()


def claimed(runs: int, seconds: float) -> None:
    if _on:
        _m.claim_seconds.observe(seconds)
        _m.claimed.inc(runs)


def slots(busy: int, capacity: int) -> None:
    if _on:
        _m.slots_busy.set(busy)
        _m.slots.set(capacity)


def lease_lost() -> None:
    if _on:
        _m.lease_lost.inc()


def takeovers(runs: int) -> None:
    if _on and runs:
        _m.takeovers.inc(runs)


def stored(size: int, *, in_blob: bool) -> None:
    if _on:
        _m.stored.labels("blob" if in_blob else "inline").inc(size)


def wait_registered(kind: str) -> None:
    if _on:
        _m.waits.labels(kind).inc()
