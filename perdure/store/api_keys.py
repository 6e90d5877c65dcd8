"""The server's API keys, written once for both dialects (the part of SQLStore they make): kept
as an id and a hash, never the key."""

from __future__ import annotations

from perdure.records import ApiKey, Scope
from perdure.store.connector import Operation, Query, Result, Row
from perdure.store.rows import Operations


class ApiKeyOperations(Operations):
    """API keys over `db`."""

    async def create_api_key(self, key: ApiKey) -> None:
        params = {
            "id": key.id,
            "name": key.name,
            "scope": str(key.scope),
            "hash": key.hash,
            "now": key.created_at,
        }

        def create() -> Operation[None]:
            yield Query("insert_api_key", params)

        await self.db.write(create, "create_api_key")

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        rows = await self._one("api_key", {"id": key_id}, "api_key")
        return _key(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._one("list_api_keys", {}, "list_api_keys")
        return [_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        def revoke() -> Operation[bool]:
            result: Result = yield Query("revoke_api_key", {"id": key_id, "now": self.now()})
            return result.rowcount == 1

        return await self.db.write(revoke, "revoke_api_key")


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scope=Scope(row["scope"]),
        hash=row["hash"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
