"""Secrets: where they come from, and that a workflow trying every way to leak one leaves it in
no stored byte: database (SQLite file or PostgreSQL rows) and bucket (a real S3 API)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure import secrets
from perdure.blobs.object import ObjectBlobStore
from perdure.errors import ConfigurationError, SecretLeakError, TaskFailed
from perdure.logs import RedactSecrets

from .conftest import running_worker, stored_bytes

VALUE = "sk-live-4f9c2b7e1d"


async def bucket_bytes(url: str) -> bytes:
    """Every object in the bucket under the URL's prefix, as stored, concatenated."""
    bucket = ObjectBlobStore(url)
    return b"".join([await bucket._stored(key) for key in await bucket.keys_older_than(math.inf)])


@pytest.fixture
def provided() -> Iterator[None]:
    def vault(name: str) -> str | None:
        return VALUE if name == "OPENAI_API_KEY" else None

    secrets.add_provider(vault)
    yield
    secrets.remove_provider(vault)


async def test_a_secret_reaches_no_storage_by_any_path(
    database_url: str, s3_blob_url: str, provided: None
) -> None:
    app = perdure.App("leaky", database=database_url, blobs=s3_blob_url, inline_limit=1024)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactSecrets())
    user_log = logging.getLogger("leaky.user")
    user_log.addHandler(handler)
    user_log.setLevel(logging.INFO)
    one_try = perdure.Retry(max_attempts=1)

    @app.step(name="return_secret", retry=one_try)
    async def return_secret() -> object:
        return perdure.secret("OPENAI_API_KEY")

    @app.step(name="return_value", retry=one_try)
    async def return_value() -> str:
        return "Bearer " + perdure.secret("OPENAI_API_KEY").reveal()

    @app.step(name="return_big", retry=one_try)
    async def return_big() -> str:  # big: it would go to the bucket
        return "x" * 5000 + perdure.secret("OPENAI_API_KEY").reveal()

    @app.step(name="raise_it", retry=one_try)
    async def raise_it() -> None:
        key = perdure.secret("OPENAI_API_KEY").reveal()
        user_log.info("calling the API with %s", key)
        raise PermissionError(f"401 Unauthorized for key {key}")

    @app.task(name="child")
    async def child(token: str) -> str:
        return "ok"

    @app.task(name="leak", retry=one_try)
    async def leak(how: str) -> Any:
        if how == "fine":  # a big value without the secret: it does go to the bucket
            return "y" * 5000 + str(len(perdure.secret("OPENAI_API_KEY").reveal()))
        if how == "secret":
            return await return_secret()
        if how == "value":
            return await return_value()
        if how == "big":
            return await return_big()
        if how == "child":  # an argument of a run is stored
            return await child.trigger_and_wait(perdure.secret("OPENAI_API_KEY").reveal())
        if how == "result":  # the task's own result
            return perdure.secret("OPENAI_API_KEY").reveal()
        await raise_it()
        return None

    try:
        async with running_worker(app):
            fine = await leak.trigger("fine")
            assert await fine.result(timeout=30) == "y" * 5000 + str(len(VALUE))
            for how in ("secret", "value", "big", "child", "result", "raise"):
                handle = await leak.trigger(how)
                with pytest.raises(TaskFailed) as failed:
                    await handle.result(timeout=30)
                message = failed.value.error_message
                if how in ("secret", "value", "big"):  # refused, naming the step
                    assert f"SecretLeakError: step 'return_{how}'" in message, message
                elif how in ("child", "result"):
                    assert "SecretLeakError" in failed.value.error_type + message, message
    finally:
        user_log.removeHandler(handler)
    assert lines == ["calling the API with <secret OPENAI_API_KEY>"]
    await app.store.open()
    database = stored_bytes(app)
    await app.close()
    assert b"401 Unauthorized for key" in database  # the failure was stored, redacted
    assert VALUE.encode() not in database
    bucket = await bucket_bytes(s3_blob_url)
    assert len(bucket) > 0  # the big result is there (else this check would prove nothing)
    assert VALUE.encode() not in bucket
    with pytest.raises(SecretLeakError):
        perdure.secret("OPENAI_API_KEY").__reduce__()


def test_secrets_come_from_providers_the_environment_and_a_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provided: None
) -> None:
    env_file = tmp_path / "worker.env"
    env_file.write_text('# secrets for the worker\nFROM_FILE="file-value-123"\nBOTH=from-file\n')
    monkeypatch.setenv("PERDURE_ENV_FILE", str(env_file))
    monkeypatch.setenv("BOTH", "from-environment")
    assert perdure.secret("OPENAI_API_KEY").reveal() == VALUE  # the provider
    assert perdure.secret("FROM_FILE").reveal() == "file-value-123"  # the .env file
    assert perdure.secret("BOTH").reveal() == "from-environment"  # the environment wins
    with pytest.raises(ConfigurationError, match=r"'MISSING' was not found.*worker\.env"):
        perdure.secret("MISSING")
    env_file.write_text("FROM_FILE=changed-value-456\n")  # re-read when the file changes
    import os

    os.utime(env_file, (1, 1))
    assert perdure.secret("FROM_FILE").reveal() == "changed-value-456"
