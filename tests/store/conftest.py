"""The `store` fixture of the contract suites: every backend, in the clear and encrypted."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from perdure.blobs import LocalBlobStore
from perdure.crypto import Keyring
from perdure.store.base import Store
from perdure.store.sqlite import SQLiteStore

from .test_contract import register


@pytest.fixture(
    params=["sqlite", "postgres", "sqlite+encryption", "postgres+encryption", "postgres-fast"]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store, in the clear and encrypted at rest (every contract holds both ways), and
    PostgreSQL without its fast paths (each one's fallback, the shared operation, holds it
    alone too)."""
    keyring = Keyring(os.urandom(32)) if request.param.endswith("+encryption") else None
    blobs = LocalBlobStore(tmp_path / "blobs", keyring=keyring)
    the_store: Store
    if request.param.startswith("postgres"):
        from perdure.store.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")
        the_store = PostgresStore(
            url,
            blobs=blobs,
            inline_limit=1024,
            keyring=keyring,
            fast_paths=not request.param.endswith("-fast"),
        )
    else:
        the_store = SQLiteStore(
            tmp_path / "perdure.db", blobs=blobs, inline_limit=1024, keyring=keyring
        )
    await the_store.open()
    for worker_id in ("w1", "w2"):
        await register(the_store, worker_id)
    yield the_store
    await the_store.close()
