"""Blob stores: where values above the inline threshold go."""

from __future__ import annotations

from urllib.parse import urlparse

from perdure.blobs.base import BlobRef, BlobStore
from perdure.blobs.local import LocalBlobStore
from perdure.crypto import Keyring
from perdure.errors import ConfigurationError

__all__ = ["BlobRef", "BlobStore", "LocalBlobStore", "open_blobs"]


def open_blobs(url: str, *, keyring: Keyring | None = None) -> BlobStore:
    """The blob store for `url`: file://path, or s3:// gs:// az:// (with the s3 extra); blobs
    are encrypted with `keyring`'s current key when it has one."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(parsed.netloc + parsed.path, keyring=keyring)
    if parsed.scheme == "" and url:
        return LocalBlobStore(url, keyring=keyring)
    if parsed.scheme in ("s3", "gs", "az", "abfs", "azure"):
        try:
            from perdure.blobs.object import ObjectBlobStore
        except ImportError as exc:
            raise ConfigurationError(
                f"{parsed.scheme}:// blob URLs need the s3 extra: pip install 'perdure[s3]'"
            ) from exc
        return ObjectBlobStore(url, keyring=keyring)
    raise ConfigurationError(
        f"blob URL {url!r} is not supported; use file://PATH, s3://bucket/prefix, "
        "gs://bucket/prefix or az://container/prefix?account_name=ACCOUNT"
    )
