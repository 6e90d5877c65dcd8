"""OpenTelemetry traces of runs (extra `otel`): one trace per run, however many workers and
crashes it spans.

When the code that triggers a run is traced, the run keeps that trace's context (its W3C
traceparent). Every execution of the run — its first, each resume after a sleep or a wait, the
one after a crash on another worker — is a span `run TASK` in that trace, a child of the
trigger's span; each step attempt it executes is a span `step NAME` inside it, and current
while the step's body runs, so what the body traces (an LLM client's spans) nests under it. A
step replayed from the journal makes no span: it did not run. A run triggered inside another
run is a child of the span that triggered it. A wait makes a span `wait KIND KEY` when it
suspends the run and when it ends.

An execution that died with its worker never ends its span (a killed process exports nothing
more); the execution that resumes the run says so: `perdure.run.resumed_after` holds why the run
was given back (its worker no longer alive), and an event `previous execution lost`.

Nothing is done, and nothing is imported beyond a check, when OpenTelemetry is not installed or
no tracer provider is set (the API's default): whether a run is traced is decided once per
execution (and once per trigger), and a step or a wait of an execution that is not traced
returns at once."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed
    _trace = None  # type: ignore[assignment]

TRACER = "perdure"
"""The instrumentation scope of perdure's spans."""

_propagator: Any = TraceContextTextMapPropagator() if _trace is not None else None


_provider_set = False
"""A tracer provider was seen (OpenTelemetry lets it be set once, never unset)."""
_provider_from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
"""OpenTelemetry loads the tracer provider this names on first use (read once, at import)."""


def enabled() -> bool:
    """True when OpenTelemetry is installed and a tracer provider was set."""
    global _provider_set
    if _provider_set:
        return True
    if _trace is None:
        return False
    if getattr(_trace, "_TRACER_PROVIDER", False) is None and not _provider_from_env:
        # none set, none to load from the environment: what get_tracer_provider() would find,
        # without its look at os.environ (this is asked once per execution and per trigger)
        return False
    provider = _trace.get_tracer_provider()
    _provider_set = not isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider)
    return _provider_set


def capture() -> str | None:
    """The traceparent of the current span (to keep with a run being triggered), or None."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def execution(
    run_id: str,
    task: str,
    *,
    trace_context: str | None,
    attempt: int,
    execution: int,
    worker: str | None,
    resumed_after: str | None,
) -> Iterator[Any]:
    """The span of one execution of a run, current while it executes (call it when enabled())."""
    parent = None
    if trace_context:
        parent = _propagator.extract({"traceparent": trace_context})
    tracer = _trace.get_tracer(TRACER)
    attributes: dict[str, Any] = {
        "perdure.run.id": run_id,
        "perdure.task": task,
        "perdure.run.attempt": attempt,
        "perdure.run.execution": execution,
    }
    if worker:
        attributes["perdure.worker.id"] = worker
    if resumed_after:
        attributes["perdure.run.resumed_after"] = resumed_after
    with tracer.start_as_current_span(
        f"run {task}", context=parent, attributes=attributes, record_exception=False
    ) as span:
        if resumed_after:
            span.add_event("previous execution lost", {"perdure.note": resumed_after})
        yield span


def ended(
    span: Any, outcome: str, *, error: str | None = None, waiting_for: str | None = None
) -> None:
    """Say how an execution ended on its span (`outcome`: the run's status after it)."""
    if span is None:
        return
    span.set_attribute("perdure.run.outcome", outcome)
    if waiting_for:
        span.set_attribute("perdure.run.waiting_for", waiting_for)
    if error is not None:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error))


class StepSpan:
    """The span of one attempt of a step's body: current from its start until end()."""

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    def end(
        self,
        outcome: str,
        *,
        error: BaseException | None = None,
        size: int | None = None,
        in_blob: bool = False,
    ) -> None:
        """End it (once: a later call does nothing): completed (with where its result went),
        retried, failed (with the error) or interrupted."""
        span, self.span = self.span, None
        if span is None:
            return
        span.set_attribute("perdure.step.outcome", outcome)
        if size is not None:
            span.set_attribute("perdure.step.result_bytes", size)
            span.set_attribute("perdure.step.stored_in", "blob" if in_blob else "inline")
        if error is not None:
            span.record_exception(error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(error).__name__}"))
        span.end()
        _otel_context.detach(self.token)


_NO_STEP_SPAN = StepSpan(None, None)


def step(execution: Any, run_id: str, task: str, name: str, seq: int, attempt: int) -> StepSpan:
    """Start the span of an attempt of a step's body, inside the span of its run's `execution`
    (a do-nothing span when the execution is not traced: `execution` None)."""
    if execution is None:
        return _NO_STEP_SPAN
    attributes: dict[str, Any] = {
        "perdure.run.id": run_id,
        "perdure.task": task,
        "perdure.step.name": name,
        "perdure.step.seq": seq,
        "perdure.step.attempt": attempt,
    }
    span = _trace.get_tracer(TRACER).start_span(
        f"step {name}", context=_within(execution), attributes=attributes
    )
    return StepSpan(span, _otel_context.attach(_trace.set_span_in_context(span)))


def wait(
    execution: Any, run_id: str, kind: str, key: str, outcome: str, deadline: float | None
) -> None:
    """A span for a wait of the run, in the span of its `execution` (None: not traced): it
    suspended the run, or it ended (with a value or a timeout)."""
    if execution is None:
        return
    attributes: dict[str, Any] = {
        "perdure.run.id": run_id,
        "perdure.wait.kind": kind,
        "perdure.wait.key": key,
        "perdure.wait.outcome": outcome,
    }
    if deadline is not None:
        attributes["perdure.wait.deadline"] = deadline
    tracer = _trace.get_tracer(TRACER)
    tracer.start_span(f"wait {kind} {key}", context=_within(execution), attributes=attributes).end()


def _within(execution: Any) -> Any:
    """The context to start a span of the run in: the current one (a step's span nests in the
    step it is called from), or the execution's where none is current (a thread's call)."""
    if _trace.get_current_span() is _trace.INVALID_SPAN:
        return _trace.set_span_in_context(execution)
    return None
