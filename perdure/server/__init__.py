"""`perdure server MODULE:APP`: the REST API under /api/v1 (Starlette, served by uvicorn), a thin
shell over the App and its admin API: no SQL here. Every endpoint but /healthz and /readyz needs
an API key (`Authorization: Bearer KEY`, from `perdure api-keys create`); every error has one
shape, `{"error": {"type": ..., "message": ...}}`. The OpenAPI document is at
/api/v1/openapi.json.
"""

from __future__ import annotations

from perdure.server.api import create_app

__all__ = ["create_app"]
