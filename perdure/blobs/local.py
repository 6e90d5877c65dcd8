"""Blobs in a local folder: one file per content address, written atomically and fsynced."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from perdure.blobs.base import (
    PARTIAL_AFTER,
    REFRESH_AFTER,
    BlobRef,
    UploadTicket,
    content_key,
    pack_parts,
    unpack,
    written_with,
)
from perdure.crypto import Keyring
from perdure.errors import CorruptJournal

_HASH_WHILE_WRITING = 1024 * 1024
"""Values at least this big are hashed in parallel with their write."""
_hashers: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    global _hashers
    if _hashers is None:
        _hashers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perdure-hash")
    return _hashers


class LocalBlobStore:
    """A folder of zstd-compressed, content-addressed files."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        compression_level: int = 3,
        keyring: Keyring | None = None,
    ) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        self.compression_level = compression_level
        self.keyring = keyring

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    async def put(self, data: bytes) -> BlobRef:
        return await asyncio.to_thread(self.put_sync, data)

    def put_sync(self, data: bytes) -> BlobRef:
        """Blocking put(), for threads. A large value is hashed in another thread while it is
        written to a temporary file, then renamed to its content address (or dropped, if that
        content is stored already)."""
        if len(data) < _HASH_WHILE_WRITING:
            key = content_key(data)
            found = self._existing(key, len(data))
            if found is not None:
                return found
            header, body = pack_parts(data, self.compression_level, self.keyring)
            self._write(self._path(key), header, body)
            return BlobRef(key=key, raw_size=len(data), stored_size=len(header) + len(body))
        hashing = _hasher().submit(content_key, data)
        header, body = pack_parts(data, self.compression_level, self.keyring)
        tmp = self._spool(header, body)
        try:
            key = hashing.result()
            found = self._existing(key, len(data))
            if found is not None:
                return found
            self._commit(tmp, self._path(key))
        finally:
            tmp.unlink(missing_ok=True)
        return BlobRef(key=key, raw_size=len(data), stored_size=len(header) + len(body))

    def _existing(self, key: str, raw_size: int) -> BlobRef | None:
        """The reference of `key` if it is stored already (its time refreshed when old)."""
        path = self._path(key)
        try:
            found = path.stat()
        except FileNotFoundError:
            return None
        if time.time() - found.st_mtime > REFRESH_AFTER:
            os.utime(path)  # in use again: retention must not take it
        return BlobRef(key=key, raw_size=raw_size, stored_size=found.st_size)

    def _spool(self, *parts: bytes | memoryview) -> Path:
        """A fsynced temporary file in the store's folder holding `parts`."""
        spool = self.root / "tmp"
        spool.mkdir(parents=True, exist_ok=True)
        tmp = spool / f"{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp"
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    @staticmethod
    def _commit(tmp: Path, path: Path) -> None:
        """Rename the spooled file to `path`, durably (the folder is fsynced)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write(self, path: Path, *parts: bytes | memoryview) -> None:
        """Atomically and durably: a temporary file, fsynced, renamed, the folder fsynced."""
        tmp = self._spool(*parts)
        try:
            self._commit(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    def get_sync(self, key: str) -> bytes:
        """Blocking get(), for threads."""
        try:
            stored = self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise CorruptJournal(
                f"blob folder {self.root}: blob {key} is referenced but missing (is "
                "PERDURE_BLOB_URL the same, and reachable, in every process of the app?)"
            ) from exc
        return unpack(stored, self.keyring, what=f"blob {key}")

    async def reencrypt(self, key: str) -> bool:
        def rewrite() -> bool:
            path = self._path(key)
            stored = path.read_bytes()
            wanted = self.keyring.current_id if self.keyring is not None else None
            if written_with(stored) == wanted:
                return False
            data = unpack(stored, self.keyring, what=f"blob {key}")
            self._write(path, *pack_parts(data, self.compression_level, self.keyring))
            return True

        return await asyncio.to_thread(rewrite)

    async def upload_ticket(self, key: str) -> UploadTicket | None:
        return None  # a folder of this machine: values come through its server

    async def remove_partial_writes(self) -> int:
        return await asyncio.to_thread(self._remove_partial_writes)

    def _remove_partial_writes(self) -> int:
        removed = 0
        spool = self.root / "tmp"
        if not spool.is_dir():
            return 0
        before = time.time() - PARTIAL_AFTER
        for path in spool.iterdir():
            try:
                if path.name.endswith(".tmp") and path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def keys_older_than(self, moment: float) -> list[str]:
        return await asyncio.to_thread(self._keys_older_than, moment)

    def _keys_older_than(self, moment: float) -> list[str]:
        keys: list[str] = []
        if not self.root.exists():
            return keys
        for folder in self.root.iterdir():
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in folder.iterdir():
                if path.name.endswith(".tmp"):
                    continue
                try:
                    if path.stat().st_mtime < moment:
                        keys.append(folder.name + path.name)
                except FileNotFoundError:
                    continue
        return keys

    async def delete(self, keys: list[str], *, written_before: float) -> int:
        def remove() -> int:
            removed = 0
            for key in keys:
                path = self._path(key)
                try:
                    if path.stat().st_mtime >= written_before:
                        continue  # put again meanwhile: in use
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
            return removed

        return await asyncio.to_thread(remove)
