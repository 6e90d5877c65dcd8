"""A change signal that any thread can raise and any event loop can await."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ChangeNotifier:
    """Counts changes; `wait` returns as soon as the count moves past the one a waiter saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def generation(self) -> int:
        """How many changes were signalled so far."""
        return self._generation

    def notify(self) -> None:
        """Signal a change (thread-safe)."""
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop's waiter is gone with it
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait until generation != seen, at most `timeout` seconds; True if it changed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._generation != seen:
                return True
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            with self._lock:
                if (loop, fut) in self._waiters:
                    self._waiters.remove((loop, fut))
            return self._generation != seen
        return True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
