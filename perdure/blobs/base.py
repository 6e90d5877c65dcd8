"""The blob store protocol: content-addressed storage for values too big for the journal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import msgspec
import zstandard

from perdure.crypto import KEY_ID_SIZE, Keyring, require

_RAW = b"\x00"
_ZSTD = b"\x01"
_ENCRYPTED = 0x02  # bit set on the header byte: the rest is an envelope (see perdure.crypto)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """Where a value went and what it cost."""

    key: str
    """Content address: the SHA-256 of the raw bytes, in hex."""
    raw_size: int
    """Size of the value before compression, in bytes."""
    stored_size: int
    """Size of what was written, in bytes."""


class UploadTicket(msgspec.Struct, frozen=True, kw_only=True):
    """How a process without a blob store's credentials (a hybrid worker) stores a blob in it
    itself: not at all when it is there already (`stored_size`), else by an HTTP PUT of the
    packed bytes (see pack: compressed at `level`, encrypted with the key whose id is `key_id`
    when there is one) to the presigned `url`."""

    stored_size: int | None = None
    url: str | None = None
    key_id: bytes | None = None
    level: int = 3


class BlobStore(Protocol):
    """Content-addressed, immutable blobs. Writing the same bytes twice stores them once."""

    url: str
    """Where the blobs live, as configured (file://..., s3://...)."""

    async def put(self, data: bytes) -> BlobRef:
        """Store `data` durably (compressed when that pays) and return its reference."""
        ...

    async def get(self, key: str) -> bytes:
        """The raw bytes stored under `key`."""
        ...

    async def keys_older_than(self, moment: float) -> list[str]:
        """Keys of the blobs last written before `moment` (POSIX time). A put of bytes that
        are already stored refreshes that time when it is over REFRESH_AFTER old, so a blob
        that a step has just put is never among them."""
        ...

    async def reencrypt(self, key: str) -> bool:
        """Write the blob again under the current key (or unencrypted, with no key) unless it
        already is; True if it was rewritten. For `perdure encryption rotate`."""
        ...

    async def upload_ticket(self, key: str) -> UploadTicket | None:
        """An UploadTicket for the blob `key` (a content key), valid for UPLOAD_FOR seconds;
        None when this store cannot hand out such URLs (a local folder)."""
        ...

    async def delete(self, keys: list[str], *, written_before: float) -> int:
        """Remove those of these blobs still last written before `written_before` (one that a
        put refreshed meanwhile is kept; missing ones are fine); returns how many went."""
        ...

    async def remove_partial_writes(self) -> int:
        """Remove what writes that never finished left behind (a process killed, a disk full
        while it wrote); returns how many. A write in progress is never touched."""
        ...


PARTIAL_AFTER = 300.0
"""Seconds after its last change when a temporary file is taken for a write that never finished
(a write changes its file continuously and renames it as soon as it is complete)."""

REFRESH_AFTER = 600.0
"""Seconds after which a put of bytes already stored writes them again (a blob's last-written
time is then never more than this behind its newest put); retention keeps blobs written within
its grace period, which must be well above this."""


UPLOAD_FOR = 900.0
"""Seconds a presigned upload URL stays valid."""


def content_key(data: bytes) -> str:
    """The content address of `data`."""
    return hashlib.sha256(data).hexdigest()


_SAMPLE = 128 * 1024


def pack_parts(
    data: bytes, level: int, keyring: Keyring | None = None
) -> tuple[bytes, bytes | memoryview]:
    """What to store for `data`: a header byte and a body, written one after the other (no
    copy of a large value). Compressed with zstd when that pays (a large value is judged by a
    sample first, so incompressible data costs no full compression pass), then encrypted when
    a key is configured; the header says which."""
    header: bytes = _RAW
    body: bytes | memoryview = data
    if len(data) <= _SAMPLE or _compresses(data[:_SAMPLE], level):
        compressed = zstandard.ZstdCompressor(level=level).compress(data)
        if len(compressed) < len(data):
            header, body = _ZSTD, compressed
    if keyring is not None and keyring.encrypts:
        header = bytes([header[0] | _ENCRYPTED])
        body = keyring.encrypt(bytes(body), aad=header)
    return header, body


def _compresses(sample: bytes, level: int) -> bool:
    return len(zstandard.ZstdCompressor(level=level).compress(sample)) < 0.9 * len(sample)


def pack(data: bytes, level: int, keyring: Keyring | None = None) -> bytes:
    """pack_parts as one byte string."""
    header, body = pack_parts(data, level, keyring)
    return header + body


def unpack(stored: bytes, keyring: Keyring | None = None, *, what: str = "a blob") -> bytes:
    """The bytes `pack` was given."""
    header, body = stored[:1], stored[1:]
    if header and header[0] & _ENCRYPTED:
        body = require(keyring, what).decrypt(body, aad=header, what=what)
        header = bytes([header[0] & ~_ENCRYPTED])
    if header == _ZSTD:
        return bytes(zstandard.ZstdDecompressor().decompress(body))
    if header == _RAW:
        return body
    raise ValueError(f"{what}: unknown blob header {header!r}")


def written_with(stored: bytes) -> bytes | None:
    """The key id a packed blob is encrypted with, None if it is not encrypted."""
    if stored[:1] and stored[0] & _ENCRYPTED:
        return stored[1 : 1 + KEY_ID_SIZE]
    return None
