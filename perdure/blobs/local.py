"""Blobs in a local folder: one file per content address, written atomically and fsynced."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from perdure.blobs.base import BlobRef, content_key, pack, unpack


class LocalBlobStore:
    """A folder of zstd-compressed, content-addressed files."""

    def __init__(self, root: str | os.PathLike[str], *, compression_level: int = 3) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self.compression_level = compression_level

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    async def put(self, data: bytes) -> BlobRef:
        return await asyncio.to_thread(self.put_sync, data)

    def put_sync(self, data: bytes) -> BlobRef:
        """Blocking put(), for threads."""
        key = content_key(data)
        path = self._path(key)
        if path.exists():
            return BlobRef(key=key, raw_size=len(data), stored_size=path.stat().st_size)
        stored = pack(data, self.compression_level)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(stored)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return BlobRef(key=key, raw_size=len(data), stored_size=len(stored))

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    def get_sync(self, key: str) -> bytes:
        """Blocking get(), for threads."""
        return unpack(self._path(key).read_bytes())
