"""The optional Redis tier: wake-ups fanned out between processes, and worker presence.

PostgreSQL stays the source of truth; Redis only carries signals, so losing it (down,
partitioned, flushed) slows perdure to its PostgreSQL paths and loses nothing:
- **Wake-ups**: a write's change topics are published on one channel (coalesced: one PUBLISH
  per burst of writes in a process) and every process's subscriber turns them into its
  ChangeNotifier's wake-ups, as LISTEN/NOTIFY does without Redis (LISTEN needs a session of its
  own, which PgBouncer in transaction mode does not give). While Redis is unreachable the
  store announces its writes with NOTIFY again and listens there (`up` says which).
- **Presence**: a worker holds a key that expires `ttl` seconds after its last beat. A worker
  whose key is gone is declared dead at once: a tombstone is written in the same atomic step
  that finds the key missing, and a worker beats only while it has no tombstone, so a stopped
  worker that wakes up cannot revive itself after it was declared dead (see lease.py).

Keys of one app share a hash tag, `perdure:{app}:...`, so they live on one Redis Cluster slot.
Use one Redis database per perdure database (a `/N` at the end of the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from enum import IntEnum
from typing import Any

import msgspec

from perdure.errors import ConfigurationError

log = logging.getLogger("perdure.redis")

CHANNEL = "perdure:changes"
_TIMEOUT = 1.0
"""Seconds a Redis call may take before Redis counts as unreachable."""
_TOMBSTONE_TTL = 86_400
"""Seconds a dead worker's tombstone is kept (longer than any pause a process survives)."""
_RETRY_MAX = 5.0

# KEYS: alive, tombstone, members; ARGV: ttl in ms, worker id
_BEAT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('SET', KEYS[1], '1', 'XX', 'PX', ARGV[1]) then
  redis.call('SADD', KEYS[3], ARGV[2])
  return 1
end
return 0
"""
_ENTER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
# KEYS: alive, tombstone; ARGV: tombstone ttl in s
_BURY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 1
"""


class Beat(IntEnum):
    """What a presence beat found."""

    DEAD = -1
    """The worker was declared dead (it has a tombstone)."""
    MISSING = 0
    """Its key expired or Redis lost it (flushed, restarted): confirm with the store, then
    enter() again."""
    ALIVE = 1
    """Its key was there and is renewed."""


class RedisTier:
    """A Redis server at `url`: a client per event loop, the change channel, and presence."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio
            import redis.exceptions
        except ImportError as exc:
            raise ConfigurationError(
                "the Redis tier needs the redis extra: pip install 'perdure[redis]'"
            ) from exc
        self._redis = redis.asyncio
        self.errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError, OSError)
        self.url = url
        self.where = url.split("@")[-1]  # no password in logs
        self.up = True
        """False since a call failed, until one succeeds (the store then announces and listens
        through PostgreSQL)."""
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._pending: dict[asyncio.AbstractEventLoop, set[str]] = {}
        self._flushing: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"RedisTier({self.where!r})"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._redis.Redis.from_url(
                self.url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
            )
            self._clients[loop] = client
        return client

    def _went(self, up: bool, exc: Exception | None = None) -> None:
        if up and not self.up:
            log.info("Redis %s is reachable again", self.where, extra={"action": "redis_up"})
        elif not up and self.up:
            log.warning(
                "Redis %s is unreachable (%s); falling back to PostgreSQL",
                self.where,
                exc,
                extra={"action": "redis_down"},
            )
        self.up = up

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """A Redis command; records whether Redis answered, and raises its error if not."""
        try:
            result = await getattr(self._client(), name)(*args, **kwargs)
        except self.errors as exc:
            self._went(False, exc)
            raise
        self._went(True)
        return result

    async def detach(self) -> None:
        """Close this event loop's connections (its loop is about to end)."""
        loop = asyncio.get_running_loop()
        flushing = self._flushing.pop(loop, None)
        if flushing is not None:
            with contextlib.suppress(Exception):
                await flushing
        self._pending.pop(loop, None)
        client = self._clients.pop(loop, None)
        if client is not None:
            with contextlib.suppress(*self.errors):
                await client.aclose()

    # -- wake-ups ------------------------------------------------------------------------

    def announce(self, topics: Collection[str]) -> None:
        """Publish `topics` to every process soon (in the background; the topics of writes
        made meanwhile go in the same message)."""
        loop = asyncio.get_running_loop()
        self._pending.setdefault(loop, set()).update(topics)
        flushing = self._flushing.get(loop)
        if flushing is None or flushing.done():
            self._flushing[loop] = loop.create_task(self._flush(loop), name="perdure-announce")

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending[loop]
        while pending:
            topics = sorted(pending)
            pending.clear()
            with contextlib.suppress(*self.errors):  # (logged by _went; NOTIFY takes over)
                await self._call("publish", CHANNEL, msgspec.msgpack.encode(topics))

    async def listen(self, on_topics: Callable[[Collection[str] | None], None]) -> None:
        """Subscribe and pass each message's topics to `on_topics` (None when subscribed:
        changes made while away are unknown). Returns when the subscription is lost."""
        pubsub = self._client().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            self._went(True)
            on_topics(None)
            while True:
                message = await pubsub.get_message(timeout=_TIMEOUT)
                if message is None:
                    await pubsub.ping()  # a silent partition shows as a timeout here
                    continue
                if message.get("type") == "message":
                    on_topics(msgspec.msgpack.decode(message["data"], type=list[str]))
        except self.errors as exc:
            self._went(False, exc)
        finally:
            with contextlib.suppress(*self.errors, RuntimeError):
                await pubsub.aclose()

    async def reachable(self) -> None:
        """Return once Redis answers a PING (retrying with backoff)."""
        delay = 0.1
        while True:
            with contextlib.suppress(*self.errors):
                await self._call("ping")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    # -- presence ------------------------------------------------------------------------

    @staticmethod
    def _keys(app: str, worker_id: str) -> list[str]:
        return [
            f"perdure:{{{app}}}:alive:{worker_id}",
            f"perdure:{{{app}}}:dead:{worker_id}",
            f"perdure:{{{app}}}:workers",
        ]

    async def beat(self, app: str, worker_id: str, ttl: float) -> Beat:
        """Renew `worker_id`'s presence for `ttl` seconds, if it still has it."""
        keys = self._keys(app, worker_id)
        found = await self._call("eval", _BEAT, 3, *keys, int(ttl * 1000), worker_id)
        return Beat(int(found))

    async def enter(self, app: str, worker_id: str, ttl: float) -> Beat:
        """Give `worker_id` presence for `ttl` seconds (a new worker, or one its store
        confirmed alive after Beat.MISSING); DEAD if it was declared dead."""
        keys = self._keys(app, worker_id)
        found = await self._call("eval", _ENTER, 3, *keys, int(ttl * 1000), worker_id)
        return Beat(int(found))

    async def leave(self, app: str, worker_id: str) -> None:
        """`worker_id` stopped: drop its presence (its store record says it stopped)."""
        alive, _dead, members = self._keys(app, worker_id)
        client = self._client()
        try:
            async with client.pipeline(transaction=True) as pipe:
                await pipe.delete(alive).srem(members, worker_id).execute()
        except self.errors as exc:
            self._went(False, exc)
            raise

    async def absent(self, app: str, *, me: str) -> list[str]:
        """The workers of `app` (other than `me`) whose presence expired."""
        members_key = self._keys(app, me)[2]
        members = sorted(m.decode() for m in await self._call("smembers", members_key))
        others = [m for m in members if m != me]
        if not others:
            return []
        alive = await self._call("mget", [self._keys(app, w)[0] for w in others])
        return [w for w, there in zip(others, alive, strict=True) if there is None]

    async def bury(self, app: str, worker_id: str) -> bool:
        """Declare `worker_id` dead if its presence is still gone (atomically: it cannot beat
        again after this); True if this call did."""
        alive, dead, _members = self._keys(app, worker_id)
        return bool(await self._call("eval", _BURY, 2, alive, dead, _TOMBSTONE_TTL))

    async def forget(self, app: str, worker_id: str) -> None:
        """`worker_id` was reaped: stop looking at it."""
        await self._call("srem", self._keys(app, worker_id)[2], worker_id)
