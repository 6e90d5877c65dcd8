"""The blob stores, local folder and S3 (a real S3 API: moto_server), against one contract."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import perdure
from perdure.blobs import BlobStore, open_blobs
from perdure.errors import CorruptJournal

from ..conftest import running_worker


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


async def test_a_missing_blob_is_a_clear_error(blobs: BlobStore) -> None:
    with pytest.raises((CorruptJournal, FileNotFoundError)):
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
