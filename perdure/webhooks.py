"""Webhooks: `@app.webhook(name, secret=..., task=...)` makes `POST /webhooks/{name}` on the
server trigger `task` with the request's JSON payload, once per delivery, if and only if the
request is signed with the secret and fresh.

Signatures (HMAC-SHA256), by `preset`:
- "perdure" (the default): `X-Perdure-Timestamp: <unix seconds>`, `X-Perdure-Delivery: <id>`,
  `X-Perdure-Signature: sha256=<hex HMAC of "<timestamp>." + body>`;
- "stripe": `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC of "<t>." + body>` (any v1 may
  match), the delivery id the payload's "id";
- "github": `X-Hub-Signature-256: sha256=<hex HMAC of body>`, `X-GitHub-Delivery: <id>` (GitHub
  signs no timestamp: a replay is refused by its delivery id only).
A signature is compared in constant time; a timestamp further than `tolerance` seconds from the
server's clock is refused (a replayed request), and so is anything unsigned or forged: 401, and
nothing is triggered. A delivery id seen before triggers nothing again (the run's idempotency key
names it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from perdure.errors import ConfigurationError, Unauthorized
from perdure.secrets import Secret, secret

PRESETS = ("perdure", "stripe", "github")


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook as declared."""

    name: str
    task: str
    secret: Secret | str
    """The signing secret, or the name of one (read with perdure.secret when first needed)."""
    preset: str = "perdure"
    tolerance: float = 300.0

    def key(self) -> bytes:
        value = (
            self.secret.reveal()
            if isinstance(self.secret, Secret)
            else secret(self.secret).reveal()
        )
        return value.encode()


def check(hook: Webhook) -> None:
    """ConfigurationError for a webhook that cannot work."""
    if hook.preset not in PRESETS:
        raise ConfigurationError(
            f"webhook {hook.name!r}: unknown preset {hook.preset!r} (known: {', '.join(PRESETS)})"
        )
    if hook.tolerance <= 0:
        raise ConfigurationError(f"webhook {hook.name!r}: tolerance must be positive")


def _mac(key: bytes, *parts: bytes) -> str:
    return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()


def _fresh(hook: Webhook, stamp: str | None, now: float) -> bytes:
    try:
        when = float(stamp or "")
    except ValueError:
        raise Unauthorized("unsigned") from None
    if abs(now - when) > hook.tolerance:
        raise Unauthorized("stale")
    return (stamp or "").encode()


def verify(
    hook: Webhook, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> tuple[str, Any]:
    """(delivery id, payload) of a request signed for `hook`; Unauthorized otherwise (its
    message says why, for the log; the caller answers without it)."""
    now = time.time() if now is None else now
    key = hook.key()
    h = {k.lower(): v for k, v in headers.items()}
    if hook.preset == "perdure":
        stamp = _fresh(hook, h.get("x-perdure-timestamp"), now)
        given = h.get("x-perdure-signature", "").removeprefix("sha256=")
        if not hmac.compare_digest(given, _mac(key, stamp, b".", body)):
            raise Unauthorized("bad signature")
        delivery = h.get("x-perdure-delivery", "")
    elif hook.preset == "stripe":
        fields = [
            part.split("=", 1) for part in h.get("stripe-signature", "").split(",") if "=" in part
        ]
        stamp = _fresh(hook, next((v for k, v in fields if k == "t"), None), now)
        want = _mac(key, stamp, b".", body)
        if not any(hmac.compare_digest(v, want) for k, v in fields if k == "v1"):
            raise Unauthorized("bad signature")
        delivery = ""
    else:  # github
        given = h.get("x-hub-signature-256", "").removeprefix("sha256=")
        if not hmac.compare_digest(given, _mac(key, body)):
            raise Unauthorized("bad signature")
        delivery = h.get("x-github-delivery", "")
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        raise Unauthorized("the payload is not JSON") from None
    if hook.preset == "stripe" and isinstance(payload, dict):
        delivery = str(payload.get("id", ""))
    if not delivery:
        raise Unauthorized("no delivery id")
    return delivery, payload


def sign(secret_value: str, body: bytes, *, timestamp: float | None = None) -> dict[str, str]:
    """The headers of the "perdure" preset for `body` (for a sender in Python, and tests)."""
    stamp = str(int(time.time() if timestamp is None else timestamp)).encode()
    return {
        "X-Perdure-Timestamp": stamp.decode(),
        "X-Perdure-Signature": "sha256=" + _mac(secret_value.encode(), stamp, b".", body),
    }
