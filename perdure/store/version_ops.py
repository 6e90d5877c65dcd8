"""Versions of runs, written once for both dialects (the part of SQLStore they make): the runs
no live worker can resume, and moving a run to another version of the code."""

from __future__ import annotations

from perdure.records import RunRecord
from perdure.store.connector import Operation, Query, Result
from perdure.store.notify import CLAIMABLE
from perdure.store.rows import Operations


class VersionOperations(Operations):
    """Runs by version over `db`."""

    async def stranded_runs(
        self, *, app: str | None = None, before: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        params = {"app": app, "before": before, "limit": limit}
        return await self._runs("stranded_runs", params, "stranded")

    async def repin_run(self, run_id: str, *, lease: int, version: str) -> bool:
        params = {"id": run_id, "lease": lease, "version": version, "now": self.now()}

        def repin() -> Operation[bool]:
            result: Result = yield Query("repin_run", params)
            return result.rowcount == 1

        # workers of the new version may claim it now
        return await self.db.write(repin, "repin_run", (CLAIMABLE,))
