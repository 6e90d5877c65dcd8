"""What a run shows while it runs: its metadata (replaced whole at each change), its streams
(chunks appended in order, kept with the run) and the lifecycle hooks it fired, written once for
both dialects (the part of SQLStore they make). All are fenced by the run's lease; a change of
metadata or streams announces the run's topic, so whoever follows the run hears of it at once."""

from __future__ import annotations

from collections.abc import Sequence

from perdure.errors import LeaseLost
from perdure.records import Lease, Value
from perdure.store.connector import Operation, Query, Result
from perdure.store.notify import run_topic
from perdure.store.rows import Operations


class RunDataOperations(Operations):
    """Metadata, streams and hook marks over `db`."""

    async def set_metadata(self, run_id: str, lease: Lease, metadata: Value) -> None:
        params = {
            "id": run_id,
            "lease": lease.number,
            "worker_id": lease.worker_id,
            **self.values.columns("metadata", await self.values.offload(metadata)),
        }

        def put() -> Operation[None]:
            result: Result = yield Query("set_metadata", params)
            if result.rowcount != 1:
                raise LeaseLost(f"run {run_id} is no longer leased to this worker")

        await self.db.write(put, "set_metadata", (run_topic(run_id),), durable=False)

    async def append_stream(
        self,
        run_id: str,
        lease: Lease,
        name: str,
        chunks: Sequence[tuple[Value, str]],
        *,
        max_chunks: int,
    ) -> list[int | None]:
        now = self.now()
        batch = [
            {
                "run_id": run_id,
                "name": name,
                "origin": origin,
                "lease": lease.number,
                "worker_id": lease.worker_id,
                "max_chunks": max_chunks,
                "now": now,
                **self.values.columns("data", await self.values.offload(chunk)),
            }
            for chunk, origin in chunks
        ]

        def append() -> Operation[list[int | None]]:
            positions: list[int | None] = []
            for params in batch:
                row = (yield Query("append_stream", params)).first
                if row is None:  # made by an execution before (a replay): that one stands
                    row = (yield Query("stream_chunk_from", params)).first
                if row is not None:
                    positions.append(int(row["seq"]))
                    continue
                held = (yield Query("check_lease", {"id": run_id})).first
                if held is None or held["lease"] != lease.number or held["status"] != "running":
                    raise LeaseLost(f"run {run_id} is no longer leased to this worker")
                positions.append(None)  # the run holds max_chunks already
            return positions

        return await self.db.write(append, "append_stream", (run_topic(run_id),), durable=False)

    async def read_stream(
        self, run_id: str, name: str | None, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, Value]]:
        params = {"run_id": run_id, "name": name, "after": after, "limit": limit}

        rows = await self._one("read_stream", params, "read_stream")
        chunks = []
        for row in rows:
            value = await self.values.from_columns(row, "data")
            assert value is not None
            chunks.append((int(row["seq"]), str(row["name"]), value))
        return chunks

    async def mark_hook(self, run_id: str, lease: Lease, event: str, key: int = 0) -> bool:
        params = {
            "run_id": run_id,
            "lease": lease.number,
            "worker_id": lease.worker_id,
            "event": event,
            "key": key,
            "now": self.now(),
        }

        def mark() -> Operation[bool]:
            result: Result = yield Query("mark_hook", params)
            return result.rowcount == 1

        # durable: a hook that ran must not run again after a crash
        return await self.db.write(mark, "mark_hook")
