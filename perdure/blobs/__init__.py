"""Blob stores: where values above the inline threshold go."""

from __future__ import annotations

from urllib.parse import urlparse

from perdure.blobs.base import BlobRef, BlobStore
from perdure.blobs.local import LocalBlobStore
from perdure.errors import ConfigurationError

__all__ = ["BlobRef", "BlobStore", "LocalBlobStore", "open_blobs"]


def open_blobs(url: str) -> BlobStore:
    """The blob store for `url` (file://path; object stores arrive with the s3 extra)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(parsed.netloc + parsed.path)
    if parsed.scheme == "" and url:
        return LocalBlobStore(url)
    raise ConfigurationError(
        f"blob URL {url!r} is not supported by this version of perdure; use file://PATH"
    )
