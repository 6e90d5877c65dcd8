"""Retry policies: which errors are retried, and after how long."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from perdure.errors import ConfigurationError, RetryAfter


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
    retry_on: tuple[type[BaseException], ...] = ()
    """Retry only errors of these types (empty: every error that may be retried)."""
    dont_retry_on: tuple[type[BaseException], ...] = ()
    """Never retry errors of these types (checked after `retry_on`)."""
    should_retry: Callable[[BaseException], bool] | None = None
    """Decides last, for errors the type lists let through: False fails at once."""

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
        for name in ("retry_on", "dont_retry_on"):
            types = getattr(self, name)
            if not isinstance(types, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in types
            ):
                raise ConfigurationError(
                    f"Retry.{name} must be a tuple of exception classes, got {types!r}"
                )
        if self.should_retry is not None and not callable(self.should_retry):
            raise ConfigurationError(
                f"Retry.should_retry must be callable, got {self.should_retry!r}"
            )

    def allows(self, error: BaseException) -> bool:
        """Whether this policy lets `error` be retried at all (the attempts left aside)."""
        if self.retry_on and not isinstance(error, self.retry_on):
            return False
        if isinstance(error, self.dont_retry_on):
            return False
        return self.should_retry is None or bool(self.should_retry(error))

    def delay(
        self,
        failed_attempt: int,
        rng: random.Random | None = None,
        *,
        error: BaseException | None = None,
    ) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed: the delay
        the `error` asks for when it carries one (see retry_after), else the backoff."""
        asked = None if error is None else retry_after(error)
        if asked is not None:
            return asked
        base = min(self.max_timeout, self.min_timeout * self.factor ** (failed_attempt - 1))
        if self.jitter:
            base *= 1.0 + (rng or random).random()
        return base


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(max_attempts=1)


def retry_after(error: BaseException) -> float | None:
    """The delay an error asks for, in seconds, if it carries one: `perdure.RetryAfter`, an
    error with a numeric `retry_after` attribute, or one with an HTTP `response` whose
    Retry-After header holds seconds or a date (httpx, requests and the LLM SDKs built on them
    raise such errors for a 429 or a 503). The error's causes are looked at too."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RetryAfter):
            return current.seconds
        value = getattr(current, "retry_after", None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        headers = getattr(getattr(current, "response", None), "headers", None)
        if headers is not None:
            try:
                header = headers.get("retry-after")
            except Exception:
                header = None
            if isinstance(header, str):
                seconds = _header_seconds(header)
                if seconds is not None:
                    return seconds
        current = current.__cause__ or current.__context__
    return None


def _header_seconds(header: str) -> float | None:
    """A Retry-After header's delay: delta-seconds or an HTTP date."""
    header = header.strip()
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
