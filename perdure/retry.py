"""Retry policies and their backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass

from perdure.errors import ConfigurationError


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How often and how patiently to retry a step or a task."""

    max_attempts: int = 3
    """Attempts in all, the first one included; 1 means no retry."""
    factor: float = 2.0
    """Growth of the delay from one retry to the next."""
    min_timeout: float = 1.0
    """Delay in seconds before the first retry."""
    max_timeout: float = 60.0
    """Upper bound of any delay, in seconds (before jitter)."""
    jitter: bool = True
    """Multiply each delay by a random factor in [1, 2) so retries of many runs spread out."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"Retry.max_attempts must be >= 1, got {self.max_attempts}")
        if self.factor < 1.0:
            raise ConfigurationError(f"Retry.factor must be >= 1.0, got {self.factor}")
        if self.min_timeout < 0 or self.max_timeout < self.min_timeout:
            raise ConfigurationError(
                f"Retry needs 0 <= min_timeout <= max_timeout, got {self.min_timeout} and "
                f"{self.max_timeout}"
            )

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        base = min(self.max_timeout, self.min_timeout * self.factor ** (failed_attempt - 1))
        if self.jitter:
            base *= 1.0 + (rng or random).random()
        return base


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(max_attempts=1)
