"""Blobs in object storage (S3, GCS, Azure) through obstore: the same content-addressed,
compressed layout as the local folder, under the URL's prefix.

    s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true
    gs://bucket/prefix      az://container/prefix?account_name=ACCOUNT

Credentials come from the URL query (access_key_id, secret_access_key, ...) or the provider's
usual environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
GOOGLE_SERVICE_ACCOUNT, ...; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, ...).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import obstore
from obstore.store import AzureStore, GCSStore, S3Store, from_url

from perdure.blobs.base import (
    REFRESH_AFTER,
    UPLOAD_FOR,
    BlobRef,
    UploadTicket,
    content_key,
    pack,
    pack_parts,
    unpack,
    written_with,
)
from perdure.crypto import Keyring
from perdure.errors import ConfigurationError, CorruptJournal, StoreUnavailable

_MULTIPART = 5 * 1024 * 1024
"""Blobs above this are uploaded in parts of this size, several at once."""
_CLIENT_OPTIONS = {"allow_http", "timeout", "connect_timeout", "allow_invalid_certificates"}


def _redact(url: str) -> str:
    """The URL without its query (which may hold credentials)."""
    return url.split("?", 1)[0]


def _path(key: str) -> str:
    return f"{key[:2]}/{key[2:]}"


class ObjectBlobStore:
    """Content-addressed blobs in a bucket."""

    def __init__(
        self, url: str, *, compression_level: int = 3, keyring: Keyring | None = None
    ) -> None:
        self.url = url
        self._where = _redact(url)  # for messages: the query may hold credentials
        self.compression_level = compression_level
        self.keyring = keyring
        parts = urlsplit(url)
        config: dict[str, Any] = {}
        client: dict[str, Any] = {}
        for name, value in parse_qsl(parts.query):
            (client if name in _CLIENT_OPTIONS else config)[name] = value
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        options: Any = client or None  # obstore's ClientConfig: a TypedDict of these keys
        # a few quick retries here; the step's own retry policy is the outer loop
        retry: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
        try:
            self._store = from_url(base, **config, client_options=options, retry_config=retry)
        except Exception as exc:  # obstore's configuration errors
            raise ConfigurationError(f"blob URL {_redact(url)}: {exc}".splitlines()[0]) from exc

    async def put(self, data: bytes) -> BlobRef:
        key = content_key(data)
        path = _path(key)
        try:
            try:
                head = await obstore.head_async(self._store, path)
            except FileNotFoundError:
                pass
            else:  # content-addressed: already there (written again if old: see REFRESH_AFTER)
                age = time.time() - head["last_modified"].timestamp()
                if age <= REFRESH_AFTER:
                    return BlobRef(key=key, raw_size=len(data), stored_size=int(head["size"]))
            header, body = await asyncio.to_thread(
                pack_parts, data, self.compression_level, self.keyring
            )
            if len(body) > _MULTIPART:  # uploaded in parallel parts, header and body uncopied
                await obstore.put_async(self._store, path, [header, body], chunk_size=_MULTIPART)
            else:
                await obstore.put_async(self._store, path, header + body)
        except Exception as exc:
            raise StoreUnavailable(
                f"object store {self._where}: put of {path} failed: {exc}"
            ) from exc
        return BlobRef(key=key, raw_size=len(data), stored_size=len(header) + len(body))

    async def upload_ticket(self, key: str) -> UploadTicket | None:
        path = _path(key)
        try:
            head = await obstore.head_async(self._store, path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StoreUnavailable(f"object store {self._where}: head of {path}: {exc}") from exc
        else:  # already there (and not about to be refreshed: see put)
            if time.time() - head["last_modified"].timestamp() <= REFRESH_AFTER:
                return UploadTicket(stored_size=int(head["size"]))
        store = self._store
        if not isinstance(store, S3Store | GCSStore | AzureStore):
            return None
        try:
            url = await obstore.sign_async(store, "PUT", path, timedelta(seconds=UPLOAD_FOR))
        except Exception:  # credentials that cannot sign: the value comes through the server
            return None
        keyring = self.keyring
        return UploadTicket(
            url=url,
            key_id=keyring.current_id if keyring is not None and keyring.encrypts else None,
            level=self.compression_level,
        )

    async def get(self, key: str) -> bytes:
        path = _path(key)
        try:
            result = await obstore.get_async(self._store, path)
            stored = bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            raise CorruptJournal(
                f"object store {self._where}: blob {key} is referenced but missing"
            ) from exc
        except Exception as exc:
            raise StoreUnavailable(
                f"object store {self._where}: get of {path} failed: {exc}"
            ) from exc
        return await asyncio.to_thread(unpack, stored, self.keyring, what=f"blob {key}")

    async def _stored(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, _path(key))
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise StoreUnavailable(
                f"object store {self._where}: get of {key} failed: {exc}"
            ) from exc

    async def reencrypt(self, key: str) -> bool:
        stored = await self._stored(key)
        wanted = self.keyring.current_id if self.keyring is not None else None
        if written_with(stored) == wanted:
            return False
        data = await asyncio.to_thread(unpack, stored, self.keyring, what=f"blob {key}")
        packed = await asyncio.to_thread(pack, data, self.compression_level, self.keyring)
        try:
            await obstore.put_async(self._store, _path(key), packed)
        except Exception as exc:
            raise StoreUnavailable(
                f"object store {self._where}: put of {key} failed: {exc}"
            ) from exc
        return True

    async def remove_partial_writes(self) -> int:
        return 0  # an object is written whole or not at all

    async def keys_older_than(self, moment: float) -> list[str]:
        keys = []
        try:
            async for batch in obstore.list(self._store):
                for meta in batch:
                    path = str(meta["path"])
                    folder, _, name = path.rpartition("/")
                    folder = folder.rsplit("/", 1)[-1]
                    if len(folder) == 2 and meta["last_modified"].timestamp() < moment:
                        keys.append(folder + name)
        except Exception as exc:
            raise StoreUnavailable(f"object store {self._where}: list failed: {exc}") from exc
        return keys

    async def delete(self, keys: list[str], *, written_before: float) -> int:
        doomed = []
        try:
            for key in keys:
                try:
                    head = await obstore.head_async(self._store, _path(key))
                except FileNotFoundError:
                    continue
                if head["last_modified"].timestamp() < written_before:  # else: put again, in use
                    doomed.append(_path(key))
            if doomed:
                await obstore.delete_async(self._store, doomed)
        except Exception as exc:
            raise StoreUnavailable(f"object store {self._where}: delete failed: {exc}") from exc
        return len(doomed)
