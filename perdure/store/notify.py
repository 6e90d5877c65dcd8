"""A change signal that any thread can raise and any event loop can await, by topic.

Topics name what changed: "claimable" (a run became claimable), "cancel" (a cancel was
requested), "run:<id>" (that run's status changed). A waiter takes a token before it reads the
state it waits on, then waits for a change of its topics *since the token*, so a change that
lands between the read and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Collection

CLAIMABLE = "claimable"
"""A run became claimable (created, released, requeued, suspended with a timer)."""
CANCEL = "cancel"
"""A cancel was requested for a running run."""


def run_topic(run_id: str) -> str:
    """The topic of one run's status."""
    return f"run:{run_id}"


_MAX_TOPICS = 100_000


class ChangeNotifier:
    """Counts changes per topic and wakes the waiters of those topics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._everything = 0
        self._topics: OrderedDict[str, int] = OrderedDict()
        self._waiters: list[
            tuple[frozenset[str] | None, asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = []

    def token(self) -> int:
        """The current generation; pass it to wait() as `since`."""
        return self._generation

    def notify(self, topics: Collection[str] | None) -> None:
        """Signal a change of `topics` (None: of anything). Thread-safe."""
        with self._lock:
            self._generation += 1
            if topics is None:
                self._everything = self._generation
            else:
                for topic in topics:
                    self._topics[topic] = self._generation
                    self._topics.move_to_end(topic)
                while len(self._topics) > _MAX_TOPICS:
                    self._topics.popitem(last=False)
            woken, kept = [], []
            for waiter in self._waiters:
                wanted = waiter[0]
                if topics is None or wanted is None or not wanted.isdisjoint(topics):
                    woken.append(waiter)
                else:
                    kept.append(waiter)
            self._waiters = kept
        here = asyncio._get_running_loop()
        for _topics, loop, fut in woken:
            if loop is here:  # (no wake-up of the loop's selector: it is running this)
                loop.call_soon(_resolve, fut)
                continue
            with contextlib.suppress(RuntimeError):  # a closed loop's waiter is gone with it
                loop.call_soon_threadsafe(_resolve, fut)

    def changed(self, since: int, topics: frozenset[str] | None) -> bool:
        """True if `topics` (None: anything) changed after generation `since`. Thread-safe."""
        with self._lock:
            return self.changed_since(since, topics)

    def changed_since(self, since: int, topics: frozenset[str] | None) -> bool:
        """True if `topics` (None: anything) changed after generation `since` (holding the
        lock)."""
        if topics is None:
            return self._generation != since
        if self._everything > since:
            return True
        if len(self._topics) >= _MAX_TOPICS:
            # topics may have been forgotten: assume the worst
            return self._generation != since
        return any(self._topics.get(topic, 0) > since for topic in topics)

    async def wait(
        self,
        since: int,
        topics: frozenset[str] | None,
        timeout: float,
        wake: asyncio.Future[None] | None = None,
    ) -> bool:
        """Wait until `topics` changed after `since`, at most `timeout` seconds, or until the
        caller resolves `wake` (a future of its own: its events end the wait as a change does,
        without a task per event)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future() if wake is None else wake
        entry = (topics, loop, fut)
        with self._lock:
            if self.changed_since(since, topics):
                return True
            self._waiters.append(entry)
        handle = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.changed_since(since, topics)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
