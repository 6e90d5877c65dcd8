"""The API's OpenAPI 3.1 document, made from its table of routes and their msgspec schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from perdure.server.schemas import ErrorOut

Route = tuple[str, str, Any, Any, Any, Any, str]
"""(method, path, scope or None, handler, request schema, response schema, summary)."""


def openapi(title: str, routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (method, path, scope, handler, request schema,
    response schema, summary): every route with its schemas and the error shape."""
    types: list[Any] = [ErrorOut]
    for _m, _p, _s, _h, request, response, _summary in routes:
        types += [t for t in (request, response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(map(id, types), schemas, strict=True))
    error = {"content": {"application/json": {"schema": refs[id(ErrorOut)]}}}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, scope, _handler, request, response, summary in routes:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {"default": {"description": "An error", **error}},
        }
        ok: dict[str, Any] = {"description": "OK"}
        if response is not None:
            ok["content"] = {"application/json": {"schema": refs[id(response)]}}
        op["responses"]["200" if method == "GET" else "2XX"] = ok
        if request is not None:
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": refs[id(request)]}},
            }
        params = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in params
            ]
        if scope is not None:
            op["security"] = [{"apiKey": []}]
            op["description"] = f"Needs an API key of scope {scope} or wider."
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": f"perdure: {title}", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
