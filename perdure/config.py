"""Settings with their environment-variable defaults (PERDURE_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from perdure.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///.perdure/perdure.db"
DEFAULT_BLOB_URL = "file://.perdure/blobs"


def env_float(name: str, default: float) -> float:
    """A float from the environment, with a clear error when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


def env_bool(name: str, default: bool) -> bool:
    """A boolean from the environment: 1/true/yes/on or 0/false/no/off."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """How a worker runs; every field has a PERDURE_* environment default."""

    concurrency: int = field(default_factory=lambda: int(env_float("PERDURE_CONCURRENCY", 10)))
    """Runs executed at once (sleeping runs do not count)."""
    heartbeat_interval: float = field(
        default_factory=lambda: env_float("PERDURE_HEARTBEAT_INTERVAL", 30.0)
    )
    """Seconds between heartbeats (one small write per worker)."""
    missed_heartbeats: int = field(
        default_factory=lambda: int(env_float("PERDURE_MISSED_HEARTBEATS", 3))
    )
    """A worker is stalled, and its runs taken over, after this many missed heartbeats."""
    pid_check: bool = field(default_factory=lambda: env_bool("PERDURE_PID_CHECK", True))
    """Take over at once the runs of a worker on this host whose process is gone."""
    session_check: bool = field(default_factory=lambda: env_bool("PERDURE_SESSION_CHECK", True))
    """On stores that can (PostgreSQL), take over at once the runs of a worker whose database
    session is gone."""
    reap_interval: float = field(default_factory=lambda: env_float("PERDURE_REAP_INTERVAL", 0.5))
    """Seconds between checks for dead or stalled workers."""
    presence_ttl: float = field(default_factory=lambda: env_float("PERDURE_PRESENCE_TTL", 1.2))
    """With the Redis tier: seconds after its last presence beat (sent every quarter of this)
    at which a worker counts as dead and its runs are taken over."""
    drain_timeout: float = field(default_factory=lambda: env_float("PERDURE_DRAIN_TIMEOUT", 30.0))
    """On SIGTERM/SIGINT, seconds to let running runs finish before releasing them."""
    retry_suspend_after: float = 5.0
    """A step retry delay at least this long suspends the run instead of holding its slot."""
    replay_each_step: bool = field(
        default_factory=lambda: env_bool("PERDURE_REPLAY_EACH_STEP", False)
    )
    """For tests: after each step is recorded, release the run, so that it resumes at once from
    the top and replays its journal, as after a crash at that point; code that would take
    another path on a resume fails there with NonDeterminismError. Slow: each step costs a
    replay of the ones before it."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.heartbeat_interval <= 0 or self.missed_heartbeats < 1:
            raise ConfigurationError("heartbeat_interval must be > 0 and missed_heartbeats >= 1")
        if self.drain_timeout < 0:
            raise ConfigurationError(
                f"drain_timeout (PERDURE_DRAIN_TIMEOUT) must be >= 0 seconds, got "
                f"{self.drain_timeout}"
            )
        if self.presence_ttl <= 0:
            raise ConfigurationError(
                f"presence_ttl (PERDURE_PRESENCE_TTL) must be > 0 seconds, got {self.presence_ttl}"
            )
        if self.reap_interval <= 0:
            raise ConfigurationError(
                f"reap_interval (PERDURE_REAP_INTERVAL) must be > 0 seconds, got "
                f"{self.reap_interval}"
            )

    @property
    def stalled_after(self) -> float:
        """Seconds without a heartbeat after which a worker counts as stalled."""
        return self.heartbeat_interval * self.missed_heartbeats
