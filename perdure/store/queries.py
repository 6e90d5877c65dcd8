"""Named SQL: each dialect keeps its queries in `sql/<dialect>/queries.sql` under the same names,
and its versioned migrations in `sql/<dialect>/migrations/NNNN_name.sql`."""

from __future__ import annotations

import re
from importlib import resources

from perdure.errors import SchemaTooNew

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(dialect: str) -> dict[str, str]:
    """Query name -> SQL text for `dialect`."""
    text = resources.files("perdure.store").joinpath("sql", dialect, "queries.sql").read_text()
    parts = _NAME.split(text)
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration of `dialect`, in order."""
    folder = resources.files("perdure.store").joinpath("sql", dialect, "migrations")
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            version = int(item.name.split("_", 1)[0])
            found.append((version, item.name.removesuffix(".sql"), item.read_text()))
    found.sort()
    return found


def pending_migrations(
    migrations: list[tuple[int, str, str]], version: int, target: int | None, where: str
) -> list[tuple[int, str, str]]:
    """The migrations a database at schema `version` needs to reach `target` (default: the
    latest); SchemaTooNew when the database is ahead of this perdure."""
    latest = migrations[-1][0]
    if version > latest:
        raise SchemaTooNew(
            f"database {where} has schema version {version}, but this perdure knows versions "
            f"up to {latest}; upgrade perdure"
        )
    return [m for m in migrations if version < m[0] <= (target or latest)]
