"""Workers, written once for both dialects (the part of SQLStore they make): registration,
heartbeats, the live and the dead, and the runs a worker holds that it should not."""

from __future__ import annotations

import time

from perdure.records import WorkerRecord
from perdure.store.connector import Batch, Last, Operation, Query, Result
from perdure.store.notify import CLAIMABLE
from perdure.store.rows import Operations


class WorkerOperations(Operations):
    """The workers of the store's apps over `db`."""

    async def register_worker(self, worker: WorkerRecord) -> None:
        # the session first: a registered worker without it would look dead to the others
        await self.db.hold_session(worker.id)
        # durable: a worker whose row a power cut took could claim nothing (claims need it)
        await self._count("register_worker", self._worker_params(worker))

    async def heartbeat(self, worker_id: str) -> bool:
        sent = time.time()
        params = {"id": worker_id, "now": self.now()}

        def beat() -> Operation[float | None]:
            (result,) = yield Last([Query("heartbeat", params)])
            row = result.first
            return None if row is None else float(row["server_now"])

        server_now = await self.db.write(beat, "heartbeat", durable=False)
        if server_now is None:
            return False
        self.db.observe_clock(sent, server_now)
        return True

    async def live_workers(self, *, app: str) -> list[WorkerRecord]:
        rows = await self._one("live_workers", {"app": app}, "live_workers")
        return [self._worker_record(row) for row in rows]

    async def reap_workers(self, worker_ids: list[str], *, reason: str) -> int:
        now = self.now()

        def reap() -> Operation[int]:
            requeued = 0
            for worker_id in worker_ids:
                yield Query("mark_worker_dead", {"id": worker_id, "status": "dead"})
                note = f"requeued: worker {worker_id} {reason}"
                params = {"worker_id": worker_id, "now": now, "note": note}
                requeued += (yield Query("requeue_worker_runs", params)).rowcount
            orphans: Result = yield Query("requeue_orphans", {"now": now})
            return requeued + orphans.rowcount

        return await self.db.write(reap, "reap_workers", (CLAIMABLE,))

    async def deregister_worker(self, worker_id: str) -> None:
        params = {"id": worker_id, "status": "stopped"}
        await self._count("mark_worker_dead", params, durable=False)
        await self.db.release_session(worker_id)

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        return await self.db.dead_sessions(worker_ids, me=me)

    async def release_strays(self, worker_id: str, *, keep: list[str]) -> list[str]:
        params = {"worker_id": worker_id, "keep": keep, "now": self.now()}

        def release() -> Operation[list[str]]:
            strays, _orphans = yield Batch(
                [Query("release_strays", params), Query("requeue_orphans", params)]
            )
            return [row["id"] for row in strays.rows]

        return await self.db.write(release, "release_strays", (CLAIMABLE,))

    async def note_unclaimable(self, *, app: str, tasks: list[str], note: str) -> int:
        params = {"app": app, "tasks": tasks, "note": note, "now": self.now()}
        return await self._count("note_unclaimable", params, durable=False)
