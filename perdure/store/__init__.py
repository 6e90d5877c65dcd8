"""Stores: where runs, journals and workers live."""

from __future__ import annotations

from perdure.blobs import BlobStore
from perdure.config import env_float
from perdure.crypto import Keyring
from perdure.errors import ConfigurationError
from perdure.store.base import Store
from perdure.store.redis_tier import RedisTier
from perdure.store.sqlite import SQLiteStore
from perdure.values import DEFAULT_INLINE_LIMIT

__all__ = ["RedisTier", "Store", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:///path URL (sqlite:////abs/path for an absolute one), else None."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    if url.startswith("sqlite://"):
        raise ConfigurationError(f"SQLite URL {url!r} needs three slashes: sqlite:///path/to.db")
    return None


def open_store(
    url: str,
    *,
    blobs: BlobStore,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    auto_migrate: bool = True,
    keyring: Keyring | None = None,
    redis: RedisTier | None = None,
) -> Store:
    """The store for a database URL; connections open on first use. With a `keyring` that has
    a current key, inline values are stored encrypted (blobs: see open_blobs). With `redis`
    (PostgreSQL only), wake-ups go between processes through Redis (see redis_tier)."""
    path = sqlite_path(url)
    if path is not None and redis is not None:
        raise ConfigurationError(
            "the Redis tier serves PostgreSQL deployments (an SQLite database has one host, "
            "whose wake-ups need no Redis): unset redis= / $PERDURE_REDIS_URL, or use "
            "postgresql://"
        )
    if path is not None:
        return SQLiteStore(
            path,
            blobs=blobs,
            inline_limit=inline_limit,
            auto_migrate=auto_migrate,
            keyring=keyring,
        )
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from perdure.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                "PostgreSQL URLs need the postgres extra: pip install 'perdure[postgres]'"
            ) from exc
        return PostgresStore(
            url,
            blobs=blobs,
            inline_limit=inline_limit,
            auto_migrate=auto_migrate,
            pool_size=int(env_float("PERDURE_POOL_SIZE", 10)),
            keyring=keyring,
            redis=redis,
        )
    raise ConfigurationError(
        f"database URL {url!r} is not supported; use sqlite:///path/to/perdure.db or "
        "postgresql://user@host/db"
    )
