"""PostgreSQL's fast paths for the hottest writes, a capability of its connector: each says
whether it did the write, and when it did not, the shared operation (store/sql.py) does it and
says why (a stale lease, a collision, a cancel).

- A trigger is one autocommit statement that also notifies (insert_run_notify).
- Step records submitted in one event-loop iteration go in one transaction with one commit
  (append_entry_fenced, fenced by the lease in the statement itself).
- Completions submitted in one event-loop iteration go as one statement (finish_many; alone,
  finish_attempt_at_once): run updates, journal entries, attempts and notifications at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from perdure.errors import StoreUnavailable
from perdure.store.notify import CLAIMABLE
from perdure.store.queries import load_queries

if TYPE_CHECKING:
    from perdure.store.postgres import PostgresConnector

log = logging.getLogger("perdure.store")

SQL = load_queries("postgres")

_ENTRY_COLUMNS = (
    ("seq", "integer"),
    ("kind", "text"),
    ("name", "text"),
    ("status", "text"),
    ("codec", "text"),
    ("value", "bytea"),
    ("blob_key", "text"),
    ("raw_size", "bigint"),
    ("stored_size", "bigint"),
    ("error", "bytea"),
    ("started_at", "float8"),
    ("finished_at", "float8"),
    ("run_attempt", "integer"),
    ("attempt", "integer"),
    ("attempt_started_at", "float8"),
)
_ATTEMPT_COLUMNS = (
    ("run_attempt", "integer"),
    ("seq", "integer"),
    ("attempt", "integer"),
    ("started_at", "float8"),
    ("finished_at", "float8"),
    ("error", "bytea"),
)
Columns = tuple[tuple[str, str], ...]


def _rows_sql(prefix: str, columns: Columns, count: int) -> str:
    """A query yielding `count` rows of parameters named PREFIX+column: none, one row of
    scalars, or one array per column. Arrays cost far more to send than scalars (psycopg
    inspects each list), and most finishes carry one row or none."""
    if count == 0:
        return (
            "SELECT "
            + ", ".join(f"NULL::{kind} AS {name}" for name, kind in columns)
            + (" WHERE false")
        )
    if count == 1:
        return "SELECT " + ", ".join(
            f"%({prefix}{name})s::{kind} AS {name}" for name, kind in columns
        )
    arrays = ", ".join(f"%({prefix}{name})s::{kind}[]" for name, kind in columns)
    return f"SELECT * FROM unnest({arrays}) AS r({', '.join(name for name, _ in columns)})"


def _rows_params(prefix: str, columns: Columns, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of _rows_sql(prefix, columns, len(rows))."""
    if len(rows) == 1:
        return {f"{prefix}{name}": rows[0][name] for name, _ in columns}
    return {f"{prefix}{name}": [row[name] for row in rows] for name, _ in columns}


_FINISH_COLUMNS = (
    "id",
    "lease",
    "worker_id",
    "status",
    "available_at",
    "children_target",
    "result_codec",
    "result",
    "result_blob",
    "result_raw_size",
    "result_stored_size",
    "error",
    "bump",
    "now",
    "finished_at",
    "note",
    "waiting_for",
    "signals",
)
_RUN_ENTRY_COLUMNS = (("run_id", "text"), *_ENTRY_COLUMNS)
_RUN_ATTEMPT_COLUMNS = (("run_id", "text"), *_ATTEMPT_COLUMNS)


@functools.cache
def finish_many_statement(entries: int, attempts: int) -> str:
    """finish_many for this many entries and attempts in all (2 stands for "several")."""
    return (
        SQL["finish_many"]
        .replace("/* entries */", _rows_sql("e_", _RUN_ENTRY_COLUMNS, entries))
        .replace("/* attempts */", _rows_sql("a_", _RUN_ATTEMPT_COLUMNS, attempts))
    )


@functools.cache
def finish_statement(entries: int, attempts: int) -> str:
    """finish_attempt_at_once for this many entries and attempts (2 stands for "several")."""
    return (
        SQL["finish_attempt_at_once"]
        .replace("/* entries */", _rows_sql("e_", _ENTRY_COLUMNS, entries))
        .replace("/* attempts */", _rows_sql("a_", _ATTEMPT_COLUMNS, attempts))
    )


@dataclass(slots=True)
class _Finish:
    """One run's completion waiting for its group's statement."""

    params: dict[str, Any]
    entries: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    topics: list[str]


Item = TypeVar("Item")
Group = list[tuple[Item, "asyncio.Future[bool]"]]
"""Writes submitted in one event-loop iteration, each with the future its writer awaits."""


class PostgresFastPaths:
    """The fast paths of one PostgreSQL connector."""

    def __init__(self, db: PostgresConnector) -> None:
        self.db = db
        self._append_groups: dict[asyncio.AbstractEventLoop, Group[dict[str, Any]]] = {}
        self._finish_groups: dict[asyncio.AbstractEventLoop, Group[_Finish]] = {}
        self._group_tasks: set[asyncio.Task[None]] = set()
        self.grouped_appends = 0
        """Step records written through group commit (for tests and stats)."""
        self.append_groups = 0
        """Transactions those records took."""
        self.grouped_finishes = 0
        """Completions sent in groups."""
        self.finish_groups = 0
        """Statements those completions took."""

    async def create_one(self, params: dict[str, Any], *, give_up_after: float) -> tuple[str, bool]:
        """A trigger without a debounce key: one statement, no transaction."""
        run_id = params["id"]

        async def attempt() -> tuple[str, bool]:
            async with self.db._connection("create_run") as conn:
                if await (await conn.execute(SQL["insert_run_notify"], params)).fetchone():
                    return run_id, True
                row = await (await conn.execute(SQL["run_by_idempotency_key"], params)).fetchone()
                assert row is not None
                return str(row["id"]), row["id"] == run_id

        created = await self.db._retrying("create_run", attempt, give_up_after=give_up_after)
        self.db.announce({CLAIMABLE})
        return created

    async def append_one(self, params: dict[str, Any]) -> bool:
        """One step record, fenced by its lease; True when it was inserted."""
        return await self.db._retrying(
            "append", lambda: self._in_group(self._append_groups, params, self._commit_appends)
        )

    async def finish(
        self,
        params: dict[str, Any],
        entries: list[dict[str, Any]],
        attempts: list[dict[str, Any]],
        topics: list[str],
    ) -> bool:
        """A completion (no task retry, no cancel); True when the run was finished."""
        finish = _Finish(params, entries, attempts, topics)

        async def grouped() -> bool:
            return await self._in_group(self._finish_groups, finish, self._commit_finishes)

        if not await self.db._retrying("finish_attempt", grouped):
            return False
        self.db.announce(topics)
        return True

    async def _in_group(
        self,
        groups: dict[asyncio.AbstractEventLoop, Group[Item]],
        item: Item,
        commit: Callable[[Group[Item]], Awaitable[None]],
    ) -> bool:
        """Group commit: the writes submitted in one event-loop iteration go to the server
        together, by `commit`, once the iteration is over; it resolves each write's future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        group = groups.get(loop)
        if group is None:
            group = groups[loop] = []
            loop.call_soon(
                lambda: self._group_tasks.add(loop.create_task(self._send(groups, loop, commit)))
            )
        group.append((item, fut))
        return await fut

    async def _send(
        self,
        groups: dict[asyncio.AbstractEventLoop, Group[Item]],
        loop: asyncio.AbstractEventLoop,
        commit: Callable[[Group[Item]], Awaitable[None]],
    ) -> None:
        try:
            await commit(groups.pop(loop, []))
        finally:
            self._group_tasks.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]

    async def _commit_appends(self, group: Group[dict[str, Any]]) -> None:
        try:
            async with self.db._connection("append") as conn:
                if len(group) == 1:
                    cur = await conn.execute(SQL["append_entry_fenced"], group[0][0])
                    inserted = [cur.rowcount == 1]
                else:
                    async with conn.pipeline():
                        async with conn.transaction():
                            cursors = [
                                await conn.execute(SQL["append_entry_fenced"], params)
                                for params, _ in group
                            ]
                        inserted = [cur.rowcount == 1 for cur in cursors]
        except Exception as exc:
            for _params, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.grouped_appends += len(group)
        self.append_groups += 1
        for (_params, fut), ok in zip(group, inserted, strict=True):
            if not fut.done():
                fut.set_result(ok)

    async def _commit_finishes(self, group: Group[_Finish]) -> None:
        finished: set[str] = set()
        try:
            async with self.db._connection("finish_attempt") as conn:
                if len(group) == 1:
                    ((one, _fut),) = group
                    statement = finish_statement(
                        min(len(one.entries), 2), min(len(one.attempts), 2)
                    )
                    cur = await conn.execute(
                        statement,
                        {
                            **one.params,
                            **_rows_params("e_", _ENTRY_COLUMNS, one.entries),
                            **_rows_params("a_", _ATTEMPT_COLUMNS, one.attempts),
                            "topics": one.topics,
                        },
                    )
                    row = await cur.fetchone()
                    if row and row["finished"]:
                        finished.add(one.params["id"])
                else:
                    cur = await conn.execute(*_finish_many([one for one, _fut in group]))
                    finished = {str(row["id"]) for row in await cur.fetchall()}
        except StoreUnavailable as exc:  # each retries
            for _one, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            # one run's trouble must not fail the others: each takes the shared path
            log.warning("grouped completion failed (%s); finishing one by one", exc)
        self.grouped_finishes += len(group)
        self.finish_groups += 1
        for one, fut in group:
            if not fut.done():
                fut.set_result(one.params["id"] in finished)


def _finish_many(group: list[_Finish]) -> tuple[str, dict[str, Any]]:
    """The finish_many statement for `group`, and its parameters."""
    entries = [entry for one in group for entry in one.entries]
    attempts = [attempt for one in group for attempt in one.attempts]
    params = {
        **{f"f_{name}": [one.params[name] for one in group] for name in _FINISH_COLUMNS},
        **_rows_params("e_", _RUN_ENTRY_COLUMNS, entries),
        **_rows_params("a_", _RUN_ATTEMPT_COLUMNS, attempts),
        "t_run": [one.params["id"] for one in group for _ in one.topics],
        "t_topic": [topic for one in group for topic in one.topics],
    }
    return finish_many_statement(min(len(entries), 2), min(len(attempts), 2)), params
