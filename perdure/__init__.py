"""perdure: durable execution for Python.

A task is an ordinary function; each step it takes is checkpointed, so after a crash another
worker resumes the run after the last successful step.
"""

from perdure import errors
from perdure.app import App
from perdure.client import Client
from perdure.errors import (
    ChildFailed,
    NonRetryable,
    NonRetryableError,
    PerdureError,
    RetryAfter,
)
from perdure.handle import RunHandle
from perdure.hooks import Lifecycle
from perdure.middleware import Call
from perdure.progress import metadata, stream
from perdure.records import RunStatus
from perdure.retry import Retry
from perdure.schedules import Cron
from perdure.secrets import Secret, secret
from perdure.step import Step, step_key
from perdure.task import Task
from perdure.wait_records import Token
from perdure.waits import (
    continue_as_new,
    create_token,
    now,
    patched,
    random,
    receive,
    sleep,
    sleep_until,
    uuid4,
    wait_for_event,
    wait_for_token,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "Call",
    "ChildFailed",
    "Client",
    "Cron",
    "Lifecycle",
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
    "Token",
    "continue_as_new",
    "create_token",
    "errors",
    "metadata",
    "now",
    "patched",
    "random",
    "receive",
    "secret",
    "sleep",
    "sleep_until",
    "step_key",
    "stream",
    "uuid4",
    "wait_for_event",
    "wait_for_token",
]
