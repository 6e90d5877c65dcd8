"""The blob stores, local folder and S3 (a real S3 API: moto_server), against one contract."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import perdure
from perdure.blobs import BlobStore, open_blobs
from perdure.errors import CorruptJournal, StoreUnavailable

from ..conftest import running_worker, wait_until


@pytest.fixture(params=["file", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        url: str = request.getfixturevalue("s3_blob_url")
        return url
    return f"file://{tmp_path}/blobs"


@pytest.fixture
def blobs(blob_url: str) -> BlobStore:
    return open_blobs(blob_url)


async def test_round_trip_and_content_addressing(blobs: BlobStore) -> None:
    data = b"perdure " * 50_000
    ref = await blobs.put(data)
    assert await blobs.get(ref.key) == data
    assert ref.raw_size == len(data)
    assert ref.stored_size < len(data) // 10  # zstd
    again = await blobs.put(data)
    assert again == ref  # same content, same key, stored once


async def test_incompressible_data_is_stored_raw(blobs: BlobStore) -> None:
    data = os.urandom(300_000)
    ref = await blobs.put(data)
    assert ref.stored_size == len(data) + 1  # one header byte, no compression overhead
    assert await blobs.get(ref.key) == data


async def test_listing_by_age_and_guarded_deletes(blobs: BlobStore) -> None:
    one = await blobs.put(b"one " * 100)
    two = await blobs.put(b"two " * 100)
    later = time.time() + 5
    assert set(await blobs.keys_older_than(later)) == {one.key, two.key}
    assert await blobs.keys_older_than(time.time() - 3600) == []
    # a blob written after the cut-off is kept: it may be in use
    assert await blobs.delete([one.key, two.key], written_before=time.time() - 3600) == 0
    assert await blobs.get(one.key) == b"one " * 100
    assert await blobs.delete([one.key, "ab" * 32], written_before=later) == 1
    assert set(await blobs.keys_older_than(later)) == {two.key}
    with pytest.raises(CorruptJournal):
        await blobs.get(one.key)


async def test_a_missing_blob_is_a_clear_error(blobs: BlobStore) -> None:
    with pytest.raises(CorruptJournal):
        await blobs.get("ab" * 32)


async def test_a_run_stores_big_values_in_the_bucket(
    s3_blob_url: str, tmp_path: Path, make_app: Callable[..., perdure.App]
) -> None:
    app = perdure.App(
        "s3test",
        database=make_app().database,
        blobs=s3_blob_url,
        inline_limit=1024,
    )
    payload = os.urandom(512 * 1024)

    @app.step
    async def big() -> bytes:
        return payload

    @app.task
    async def flow() -> int:
        data = await big()
        await perdure.sleep(0.05)  # the replay reads the value back from the bucket
        return len(await big()) + len(data)

    async with running_worker(app):
        handle = await flow.trigger()
        assert await handle.result(timeout=30) == 2 * len(payload)
        journal = await app.store.load_journal(handle.id)
    steps = [e for e in journal if e.value and e.value.blob_key]
    assert len(steps) == 2
    assert all(e.value is not None and e.value.data[-len(payload) :] == payload for e in steps)


async def test_an_object_store_failure_fails_the_attempt_and_is_retried(
    s3_server: str, make_app: Callable[..., perdure.App]
) -> None:
    import urllib.request
    import uuid

    bucket = f"perdure-{uuid.uuid4().hex[:12]}"  # not created yet: puts fail
    app = perdure.App(
        "s3fail",
        database=make_app().database,
        blobs=(
            f"s3://{bucket}/blobs?endpoint={s3_server}&region=us-east-1"
            "&access_key_id=test&secret_access_key=test&allow_http=true"
        ),
        inline_limit=1024,
    )
    payload = os.urandom(64 * 1024)

    @app.step(retry=perdure.Retry(max_attempts=3, min_timeout=1.0, jitter=False))
    async def big() -> bytes:
        return payload

    @app.task
    async def flow() -> int:
        return len(await big())

    async with running_worker(app):
        handle = await flow.trigger()
        await wait_until(lambda: _failed_attempts(app, handle.id), timeout=30)
        journal = await app.store.load_journal(handle.id)
        assert journal == []  # nothing points at a blob that was not written
        request = urllib.request.Request(f"{s3_server}/{bucket}", method="PUT")
        response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        response.close()  # the store is back
        assert await handle.result(timeout=30) == len(payload)
        attempts = [a for a in await app.store.load_attempts(handle.id) if a.seq == 1]
    assert attempts[0].error is not None
    assert attempts[0].error.type == "perdure.errors.StoreUnavailable"
    assert attempts[-1].error is None


async def _failed_attempts(app: perdure.App, run_id: str) -> bool:
    return any(a.error for a in await app.store.load_attempts(run_id))


def test_object_store_urls_are_configured_and_errors_hide_credentials() -> None:
    from perdure.blobs.object import ObjectBlobStore
    from perdure.errors import ConfigurationError

    assert type(ObjectBlobStore("gs://bucket/prefix")._store).__name__ == "GCSStore"
    azure = ObjectBlobStore("az://container/prefix?account_name=acct")
    assert type(azure._store).__name__ == "AzureStore"
    with pytest.raises(ConfigurationError, match="az://container/prefix") as missing:
        ObjectBlobStore("az://container/prefix?account_key=hidden-key-value")
    assert "hidden-key-value" not in str(missing.value)


async def test_object_store_errors_do_not_carry_the_urls_credentials(s3_server: str) -> None:
    url = (
        "s3://no-such-bucket/p?endpoint=" + s3_server + "&region=us-east-1"
        "&access_key_id=test&secret_access_key=very-secret-key&allow_http=true"
    )
    store = open_blobs(url)
    with pytest.raises(StoreUnavailable) as failed:
        await store.put(b"x" * 10)
    assert "no-such-bucket" in str(failed.value)
    assert "very-secret-key" not in str(failed.value)
