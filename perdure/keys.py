"""API keys for the server: made here, shown once, kept by the store as an id and a SHA-256.

A key reads `pdk_<id>_<secret>`; the id finds the stored hash, which is compared with the hash of
the key given in constant time. Scopes nest: admin ⊃ trigger ⊃ read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from perdure.errors import ConfigurationError, Forbidden, Unauthorized
from perdure.records import ApiKey, Scope

if TYPE_CHECKING:
    from perdure.store.base import Store

_PREFIX = "pdk"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create(store: Store, *, name: str, scope: Scope | str) -> tuple[ApiKey, str]:
    """A new key: its record, and the key itself (shown once, never stored)."""
    try:
        scope = Scope(scope)
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        raise ConfigurationError(f"unknown scope {scope!r} (known: {known})") from None
    key_id = secrets.token_hex(8)
    key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        id=key_id, name=name or key_id, scope=scope, hash=_hash(key), created_at=store.now()
    )
    await store.create_api_key(record)
    return record, key


async def authorize(store: Store, key: str | None, needed: Scope) -> ApiKey:
    """The key's record if `key` is a valid, unrevoked key whose scope allows `needed`;
    Unauthorized (no detail why) or Forbidden otherwise."""
    parts = (key or "").split("_", 2)  # (the secret may hold "_" itself)
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise Unauthorized("unauthorized")
    found = await store.get_api_key(parts[1])
    stored = found.hash if found is not None else _hash("")  # compare all the same
    valid = hmac.compare_digest(stored, _hash(key or ""))
    if found is None or not valid or found.revoked_at is not None:
        raise Unauthorized("unauthorized")
    if not found.scope.allows(needed):
        raise Forbidden(f"this key's scope ({found.scope}) does not allow {needed} requests")
    return found
