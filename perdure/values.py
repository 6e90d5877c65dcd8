"""How a value is stored: inline in its row or in the blob store, compressed, encrypted, and
within which size limits."""

from __future__ import annotations

DEFAULT_INLINE_LIMIT = 256 * 1024
"""Encoded values larger than this many bytes go to the blob store (PERDURE_INLINE_LIMIT)."""
