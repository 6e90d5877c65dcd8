"""Lifecycle hooks: code that runs when a run starts, succeeds, fails (after its last retry),
suspends on a wait, resumes, or is cancelled while it runs — an alert on failure in a few lines:

    @app.on_failure
    async def alert(event: perdure.Lifecycle) -> None:
        await post_to_chat(f"{event.task} {event.run_id} failed: {event.error.message}")

Hooks are added to the App (every task) or to one task (`@research.on_success`), sync or async;
the App's run first, in the order added. Each fires **at most once per event of a run**: before
they run, the worker records the event in the store (fenced by its lease), and a recorded event
is never fired again — not after a crash, not by another worker. A hook that raises is logged
and never fails the run. Hooks run outside the run's journal: they may not call steps or wait.

When each fires (key: what tells two events of one kind apart):
- `start`: the first execution of a run, before its body;
- `resume`: each later execution (after a sleep, a wait, a retry or a crash), before its body
  (key: the execution);
- `wait`: the run suspended (key: the journal position it waits at), after that is written;
- `success`, `failure`, `cancel`: the run ended so (failure: after its last retry; cancel: a
  cancel that reached it while it ran), after its end is written.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from perdure.errors import LeaseLost, StoreError
from perdure.records import ErrorInfo, RunRecord, Transition
from perdure.store.base import Store

log = logging.getLogger("perdure.run")

EVENTS = ("start", "resume", "wait", "success", "failure", "cancel")
"""The events a hook may be added for."""

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class Lifecycle:
    """What a lifecycle hook is told."""

    event: str
    """One of EVENTS."""
    run_id: str
    """The run."""
    task: str
    """Its task."""
    attempt: int
    """The run's attempt, from 1."""
    result: Any = None
    """The run's result (success)."""
    error: ErrorInfo | None = None
    """Why it failed (failure)."""
    waiting_for: str | None = None
    """What it waits for (wait): "sleep", "children", "retry", "token:ID", ..."""


class Hooks:
    """Lifecycle hooks by event."""

    def __init__(self) -> None:
        self.by_event: dict[str, list[Callable[[Lifecycle], Any]]] = {}

    def add(self, event: str, hook: H) -> H:
        if event not in EVENTS:
            raise ValueError(f"no lifecycle event {event!r}: one of {', '.join(EVENTS)}")
        self.by_event.setdefault(event, []).append(hook)
        return hook

    def get(self, event: str) -> list[Callable[[Lifecycle], Any]]:
        return self.by_event.get(event, [])


class HookDecorators:
    """`on_start`, `on_resume`, `on_wait`, `on_success`, `on_failure` and `on_cancel`: each adds a
    hook (a function of a perdure.Lifecycle, sync or async) and returns it (a decorator)."""

    hooks: Hooks

    def on_start(self, hook: H) -> H:
        """Run `hook` when a run starts (its first execution, before its body)."""
        return self.hooks.add("start", hook)

    def on_resume(self, hook: H) -> H:
        """Run `hook` at each later execution of a run, before its body."""
        return self.hooks.add("resume", hook)

    def on_wait(self, hook: H) -> H:
        """Run `hook` when a run suspends on a wait (a sleep, a token, an event, children...)."""
        return self.hooks.add("wait", hook)

    def on_success(self, hook: H) -> H:
        """Run `hook` when a run completes (Lifecycle.result holds its result)."""
        return self.hooks.add("success", hook)

    def on_failure(self, hook: H) -> H:
        """Run `hook` when a run fails after its last retry (Lifecycle.error says why)."""
        return self.hooks.add("failure", hook)

    def on_cancel(self, hook: H) -> H:
        """Run `hook` when a run is cancelled while it runs."""
        return self.hooks.add("cancel", hook)


Tell = Callable[[str, "Transition | None"], Lifecycle]
"""Makes what hooks are told of an event (and the transition it came with)."""


def of(app: Hooks, task: Hooks) -> dict[str, list[Callable[[Lifecycle], Any]]]:
    """A task's hooks by event, the App's first (empty without any: nothing to do)."""
    if not app.by_event and not task.by_event:
        return {}
    return {e: app.get(e) + task.get(e) for e in set(app.by_event) | set(task.by_event)}


async def mark(store: Store, run: RunRecord, event: str, key: int) -> bool:
    """Record the event before its hooks run (at most once); False: it fired before, or the
    run is no longer this worker's, or the store could not say."""
    try:
        return await store.mark_hook(run.id, run.held, event, key)
    except (StoreError, LeaseLost) as exc:  # never fail a run for its hooks
        log.warning("run %s: its %s hooks are skipped: %s", run.id, event, exc)
        return False


async def fire(
    hooks: list[Callable[[Lifecycle], Any]],
    tell: Tell,
    event: str,
    transition: Transition | None,
) -> None:
    """Run `hooks` for a marked event in order; a hook that raises is logged, the others still
    run."""
    try:
        told = tell(event, transition)
    except Exception:  # (a result that does not decode here): never fail a run for hooks
        log.exception("its %s hooks are skipped", event)
        return
    for hook in hooks:
        try:
            if inspect.iscoroutinefunction(hook):
                await hook(told)
            else:  # sync: in a thread, the worker's loop goes on
                await asyncio.to_thread(hook, told)
        except Exception:
            log.exception(
                "the %s hook %s of run %s raised; the run goes on",
                event,
                getattr(hook, "__qualname__", repr(hook)),
                told.run_id,
                extra={"run_id": told.run_id, "task": told.task, "action": "hook_failed"},
            )
