"""How a value is kept, in one place: encoded within a size limit and with no secret in it, then
stored inline in its row (encrypted under the current key when one is set) or, over the inline
limit, in the blob store (which compresses and encrypts it itself).

`encode` is what the runtime calls on every argument, step result and task result;
`StoredValues` is what the store calls to turn a `Value` into the columns of its row and back.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from perdure import serde
from perdure.blobs.base import BlobStore
from perdure.crypto import KEY_ID_SIZE, Keyring, require
from perdure.errors import PayloadTooLarge
from perdure.records import Value
from perdure.secrets import check_for_leaks

DEFAULT_INLINE_LIMIT = 256 * 1024
"""Encoded values larger than this many bytes go to the blob store (PERDURE_INLINE_LIMIT)."""
ENCRYPTED_CODEC = ";aes"
"""Suffix of the codec of an inline value stored encrypted (see perdure.crypto)."""


def encode(value: Any, *, codec: serde.Codec, what: str, max_size: int | None) -> bytes:
    """`value` encoded to be stored; `what` names it in errors ("step 'fetch' result").
    PayloadTooLarge over `max_size` bytes (PERDURE_MAX_VALUE_SIZE); SecretLeakError when it
    holds a registered secret's value."""
    data = serde.encode(value, codec=codec, what=what)
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLarge(
            f"{what} is {len(data):,} bytes encoded, over the limit of {max_size:,} bytes "
            "(PERDURE_MAX_VALUE_SIZE); keep large data outside the journal and return a "
            "reference to it, or raise the limit"
        )
    check_for_leaks(data, what)
    return data


def stays_inline(value: Value | None, inline_limit: int) -> bool:
    """Whether `value` needs no blob: none, in a blob already, or no larger than the limit."""
    return value is None or value.blob_key is not None or len(value.data) <= inline_limit


_SUFFIXES = ("_codec", "", "_blob", "_raw_size", "_stored_size")


@functools.cache
def _column_names(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{suffix}" for suffix in _SUFFIXES)


class StoredValues:
    """Values to and from the columns of a row: PREFIX_codec, PREFIX (inline bytes),
    PREFIX_blob (blob key), PREFIX_raw_size and PREFIX_stored_size."""

    def __init__(self, blobs: BlobStore, *, inline_limit: int, keyring: Keyring | None) -> None:
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.keyring = keyring
        """Encrypts inline values (blobs encrypt themselves) when it has a current key."""

    async def offload(self, value: Value | None) -> Value | None:
        """`value` with its bytes in the blob store when it is over the inline limit."""
        if stays_inline(value, self.inline_limit):
            return value
        assert value is not None
        ref = await self.blobs.put(value.data)
        return Value(
            codec=value.codec,
            data=value.data,
            blob_key=ref.key,
            raw_size=ref.raw_size,
            stored_size=ref.stored_size,
        )

    def stored(self, value: Value | None) -> tuple[str | None, bytes | None, str | None, int, int]:
        """The columns of an offloaded `value` (see offload), encrypted when inline: codec,
        inline bytes, blob key, raw size, stored size."""
        if value is None:
            return None, None, None, 0, 0
        if value.blob_key is not None:  # the blob store encrypted it
            return value.codec, None, value.blob_key, value.raw_size, value.stored_size
        codec, data = value.codec, value.data
        if self.keyring is not None and self.keyring.encrypts:
            data = self.keyring.encrypt(data, aad=codec.encode())
            codec += ENCRYPTED_CODEC
        return codec, data, None, len(value.data), len(data)

    def columns(self, prefix: str, value: Value | None) -> dict[str, Any]:
        """The columns of an offloaded `value` as stored() makes them, named PREFIX_codec,
        PREFIX, PREFIX_blob, PREFIX_raw_size and PREFIX_stored_size."""
        return dict(zip(_column_names(prefix), self.stored(value), strict=True))

    async def from_columns(
        self, row: Mapping[str, Any], prefix: str, *, fetch: bool = True
    ) -> Value | None:
        """The value in `row`'s columns named as columns(prefix, ...) names them (a listing
        that leaves the bytes out has no `prefix` column: then, as with fetch=False)."""
        codec = row[f"{prefix}_codec"]
        if codec is None:
            return None
        return await self.resolve(
            codec,
            row.get(prefix),  # (a listing may leave the bytes out)
            row[f"{prefix}_blob"],
            row[f"{prefix}_raw_size"],
            row[f"{prefix}_stored_size"],
            fetch=fetch,
        )

    async def resolve(
        self,
        codec: str | None,
        data: bytes | None,
        blob_key: str | None,
        raw: int,
        stored: int,
        *,
        fetch: bool = True,
    ) -> Value | None:
        """The value in those columns; without `fetch`, only what the row says of it (codec,
        sizes, blob key) and no bytes: neither the blob store nor a key is needed."""
        if codec is None:
            return None
        if not fetch:
            return Value(
                codec=codec.removesuffix(ENCRYPTED_CODEC),
                data=b"",
                blob_key=blob_key,
                raw_size=raw,
                stored_size=stored,
            )
        if blob_key is not None:
            data = await self.blobs.get(blob_key)
            return Value(
                codec=codec, data=data, blob_key=blob_key, raw_size=raw, stored_size=stored
            )
        return self.inline(codec, data, raw, stored)

    def inline(self, codec: str, data: bytes | None, raw: int, stored: int) -> Value:
        """The value of inline columns (decrypted when it was encrypted): no await, so an
        operation can read it within its transaction."""
        if codec.endswith(ENCRYPTED_CODEC):
            codec = codec.removesuffix(ENCRYPTED_CODEC)
            data = require(self.keyring, "a stored value").decrypt(
                bytes(data or b""), aad=codec.encode(), what="a stored value"
            )
        return Value(codec=codec, data=bytes(data or b""), raw_size=raw, stored_size=stored)

    def same_inline(self, codec: str | None, stored: Any, ours: Any, what: str) -> bool:
        """Whether inline bytes `stored` (as read back) hold the same value as `ours` (as about
        to be written) under `codec`: encrypted ones are compared in the clear, since every
        write draws a fresh nonce."""
        if isinstance(stored, memoryview):
            stored = bytes(stored)
        if self.keyring is None or not codec or not codec.endswith(ENCRYPTED_CODEC):
            return bool(stored == ours)
        if stored is None or ours is None:
            return stored is ours
        aad = codec.removesuffix(ENCRYPTED_CODEC).encode()
        mine = self.keyring.decrypt(ours, aad=aad, what=what)
        return self.keyring.decrypt(stored, aad=aad, what=what) == mine

    def rotated(self, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Rewrites of the inline values in `rows` (col, id, seq, codec, value) that are not
        stored as the current key wants: under another key, or in the clear while a key is set
        (or encrypted while no key is: then decrypted with an old key)."""
        current = self.keyring.current_id if self.keyring is not None else None
        rewrites = []
        for row in rows:
            codec, stored = row["codec"], bytes(row["value"])
            encrypted = codec.endswith(ENCRYPTED_CODEC)
            if (stored[:KEY_ID_SIZE] if encrypted else None) == current:
                continue
            plain_codec = codec.removesuffix(ENCRYPTED_CODEC)
            what = f"{row['col']} of run {row['id']}"
            data = (
                require(self.keyring, what).decrypt(stored, aad=plain_codec.encode(), what=what)
                if encrypted
                else stored
            )
            new = self.columns("v", Value(codec=plain_codec, data=data))
            rewrites.append(
                {
                    "col": row["col"],
                    "id": row["id"],
                    "seq": row["seq"],
                    "codec": new["v_codec"],
                    "value": new["v"],
                    "old_codec": codec,
                    "old_value": stored,
                }
            )
        return rewrites


class RecentResults:
    """The results of the last runs completed by this process, so that a caller in the same
    process awaiting one need not read it back: small ones only, and a bounded total."""

    def __init__(self, keep: int = 4096, max_bytes: int = 8 << 20, largest: int = 16 << 10):
        self.keep = keep
        self.max_bytes = max_bytes
        self.largest = largest
        self._results: OrderedDict[str, Value] = OrderedDict()
        self._bytes = 0

    def add(self, run_id: str, value: Value) -> None:
        if len(value.data) > self.largest:
            return
        old = self._results.pop(run_id, None)
        if old is not None:
            self._bytes -= len(old.data)
        self._results[run_id] = value
        self._bytes += len(value.data)
        while len(self._results) > self.keep or self._bytes > self.max_bytes:
            _id, dropped = self._results.popitem(last=False)
            self._bytes -= len(dropped.data)

    def get(self, run_id: str) -> Value | None:
        return self._results.get(run_id)
