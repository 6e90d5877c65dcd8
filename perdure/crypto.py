"""Encryption at rest: AES-256-GCM for stored values and blobs, with key ids for rotation.

Keys come from the environment: `PERDURE_ENCRYPTION_KEY` (the key new values are encrypted
with) and `PERDURE_ENCRYPTION_OLD_KEYS` (comma-separated keys that stay readable, for rotation).
A key is 32 random bytes, written as base64 or hex (`perdure encryption new-key` makes one).

An encrypted value is `key id (8 bytes) + nonce (12 bytes) + ciphertext and tag`; the key id is
the start of the key's SHA-256, so the key that wrote a value is known without trying them all.
A value under an unknown key, or one that fails its tag check, is an error; nothing is ever
returned undecrypted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets

from perdure.errors import ConfigurationError, EncryptionError

KEY_ID_SIZE = 8
_NONCE_SIZE = 12


def key_id(key: bytes) -> bytes:
    """The id stored with every value encrypted under `key`."""
    return hashlib.sha256(key).digest()[:KEY_ID_SIZE]


def parse_key(text: str, *, source: str) -> bytes:
    """32 bytes from base64 (standard or URL-safe) or hex."""
    text = text.strip()
    candidates = []
    if len(text) == 64:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decode(text + "=" * (-len(text) % 4)))
    for key in candidates:
        if len(key) == 32:
            return key
    raise ConfigurationError(
        f"{source} is not a 32-byte key in base64 or hex; make one with "
        "`perdure encryption new-key`"
    )


def new_key() -> str:
    """A fresh key, base64."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Keyring:
    """The configured keys: one to encrypt with, any number to decrypt with."""

    def __init__(self, current: bytes | None, old: list[bytes] | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "encryption needs the cryptography package: pip install 'perdure[encryption]'"
            ) from exc
        self._aead = AESGCM
        self.current_id = None if current is None else key_id(current)
        self._keys = {key_id(k): AESGCM(k) for k in [*(old or []), *([current] if current else [])]}
        self._current = None if current is None else self._keys[key_id(current)]

    @classmethod
    def from_env(cls) -> Keyring | None:
        """The keys of PERDURE_ENCRYPTION_KEY / PERDURE_ENCRYPTION_OLD_KEYS; None if neither."""
        current = os.environ.get("PERDURE_ENCRYPTION_KEY", "").strip()
        old = [k for k in os.environ.get("PERDURE_ENCRYPTION_OLD_KEYS", "").split(",") if k.strip()]
        if not current and not old:
            return None
        return cls(
            parse_key(current, source="PERDURE_ENCRYPTION_KEY") if current else None,
            [parse_key(k, source="PERDURE_ENCRYPTION_OLD_KEYS") for k in old],
        )

    @property
    def encrypts(self) -> bool:
        """True when new values are encrypted."""
        return self._current is not None

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """The envelope of `data` under the current key."""
        if self._current is None or self.current_id is None:
            raise EncryptionError("no PERDURE_ENCRYPTION_KEY to encrypt with")
        nonce = secrets.token_bytes(_NONCE_SIZE)
        return self.current_id + nonce + self._current.encrypt(nonce, data, aad)

    def decrypt(self, envelope: bytes, aad: bytes, *, what: str) -> bytes:
        """The plaintext of an envelope; EncryptionError for an unknown key or a bad tag."""
        kid = envelope[:KEY_ID_SIZE]
        aead = self._keys.get(kid)
        if aead is None:
            raise EncryptionError(
                f"{what} is encrypted with key {kid.hex()}, which is not configured "
                "(PERDURE_ENCRYPTION_KEY, or PERDURE_ENCRYPTION_OLD_KEYS while rotating)"
            )
        nonce = envelope[KEY_ID_SIZE : KEY_ID_SIZE + _NONCE_SIZE]
        try:
            plain: bytes = aead.decrypt(nonce, envelope[KEY_ID_SIZE + _NONCE_SIZE :], aad)
        except Exception as exc:  # cryptography's InvalidTag
            raise EncryptionError(
                f"{what} failed to decrypt with key {kid.hex()}: the data was altered, or "
                "the key is not the one it was written with"
            ) from exc
        return plain


def require(keyring: Keyring | None, what: str) -> Keyring:
    """The keyring, or EncryptionError when encrypted data is met without keys."""
    if keyring is None:
        raise EncryptionError(
            f"{what} is encrypted, and no key is configured: set PERDURE_ENCRYPTION_KEY"
        )
    return keyring
