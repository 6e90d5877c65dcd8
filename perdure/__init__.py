"""perdure: durable execution for Python.

A task is an ordinary function; each step it takes is checkpointed, so after a crash another
worker resumes the run after the last successful step.
"""

from perdure import errors
from perdure.app import App
from perdure.errors import (
    ChildFailed,
    NonRetryable,
    NonRetryableError,
    PerdureError,
    RetryAfter,
)
from perdure.records import RunStatus
from perdure.retry import Retry
from perdure.secrets import Secret, secret
from perdure.step import Step, step_key
from perdure.task import RunHandle, Task
from perdure.waits import now, random, sleep, uuid4

__version__ = "0.1.0"

__all__ = [
    "App",
    "ChildFailed",
    "NonRetryable",
    "NonRetryableError",
    "PerdureError",
    "Retry",
    "RetryAfter",
    "RunHandle",
    "RunStatus",
    "Secret",
    "Step",
    "Task",
    "errors",
    "now",
    "random",
    "secret",
    "sleep",
    "step_key",
    "uuid4",
]
