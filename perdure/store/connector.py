"""What a store operation says to a database, and the small per-dialect connector that runs it.

Every store operation is written once (store/sql.py), as a generator that *yields* the named
queries it needs and *receives* their results, sans-I/O, as h11 does for HTTP:

    row = (yield Query("check_lease", {"id": run_id})).first
    results = yield Batch([Query("histories", ids), Query("histories_attempts", ids)])

It knows nothing of threads or event loops. A connector runs it: SQLite's synchronously (a
write in its group commit, on the writer thread or, quick and alone, the calling loop; a read on
the calling loop or a reader thread), PostgreSQL's with `await` on a pooled connection, sending
a Batch's queries together in one round trip. Named SQL stays per dialect in sql/<dialect>/.
Where the dialects differ, the connector says so by a capability or a method of its own (how to
pass a list, how a worker's session proves it alive, how to vacuum), never by a branch in an
operation.
"""

from __future__ import annotations

from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, NamedTuple, Protocol, TypeVar

from perdure.store.notify import ChangeNotifier

T = TypeVar("T")


Row = Mapping[str, Any]
"""A result row: column name -> value (a dict, from either dialect)."""


class Query(NamedTuple):
    """One named query of the dialect's queries.sql, with its parameters (lists are passed as
    the dialect passes lists: arrays, or JSON text for SQLite's json_each)."""

    name: str
    params: dict[str, Any]
    each: Callable[[Row], Any] | None = None
    """What to make of each row as it is read: the Result's rows are then what it made, and
    the rows themselves are let go one by one (a listing of thousands of runs is not held
    twice over, as rows and as records)."""


class Batch(tuple[Query, ...]):
    """Queries sent together (one round trip on PostgreSQL); their Results come back in order."""

    def __new__(cls, queries: Iterable[Query]) -> Batch:
        return super().__new__(cls, queries)


class Last(Batch):
    """An operation's last queries: it returns as soon as their Results are in, and raises
    nothing from them. A connector may then send them with the transaction's COMMIT, before
    reading their Results (PostgreSQL: one round trip for the whole write instead of two)."""


class Result(NamedTuple):
    """What a query returned: its rows (none for a write without RETURNING; what its `each`
    made of them, if it has one) and how many rows it changed (-1 for a read)."""

    rows: Sequence[Row]
    rowcount: int

    @property
    def first(self) -> Any:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


Step = Query | Batch
Operation = Generator[Step, Any, T]
"""A store operation: yields a Query (and receives its Result) or a Batch (and receives a list
of Results; a Last batch ends it); returns its answer."""
OperationFactory = Callable[[], Operation[T]]
"""Makes the operation afresh: a connector runs it again when the database asked for a retry
(a deadlock victim, a batch rolled back because the file was busy)."""


def rows_of(query: Query) -> Operation[Sequence[Row]]:
    """The operation of one read query: its rows."""
    result: Result = yield query
    return result.rows


class Connector(Protocol):
    """A database for the store: runs operations, reads and writes, and knows its dialect's
    ways. Safe to use from many coroutines, event loops and threads at once."""

    where: str
    """The database, for messages (a path, or host:port/db without credentials)."""
    notifier: ChangeNotifier
    """Raised on every change this process commits or hears of from others."""
    session_liveness: bool
    """Capability: dead_sessions() can prove a worker dead by its database session."""
    fast: Any
    """Capability: the dialect's fast paths for the hottest writes (see store/pg_fast.py), or
    None; each one's fallback is the shared operation."""

    async def open(self) -> None:
        """Connect and check (or apply) the schema version."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def detach(self) -> None:
        """Release what the calling event loop holds."""
        ...

    async def migrate(self, *, dry_run: bool, target: int | None) -> list[str]:
        """Apply (or list) pending migrations up to `target`."""
        ...

    def now(self) -> float:
        """The database's clock (see Store.now)."""
        ...

    def observe_clock(self, sent: float, server_now: float) -> None:
        """A reading of the database's clock, asked for at `sent` (this process's clock)."""
        ...

    def advance_clock(self, seconds: float) -> None:
        """Time travel, for tests: this process's clock of the database runs `seconds` further
        ahead (ConfigurationError where the database's own clock rules)."""
        ...

    async def read(self, make: OperationFactory[T], what: str) -> T:
        """Run a read-only operation (no transaction; it may see other commits between its
        queries)."""
        ...

    def write(
        self,
        make: OperationFactory[T],
        what: str,
        topics: Collection[str] = (),
        *,
        durable: bool = True,
        give_up_after: float | None = None,
    ) -> Awaitable[T]:
        """Run an operation in one transaction; announce `topics` when it commits. With
        durable=False the commit need not reach the disk before it returns (losing it to a
        power cut must be harmless: a claim, a heartbeat). While the database cannot take
        writes it retries, for ever or until `give_up_after` seconds: then StoreUnavailable."""
        ...

    async def watch(self) -> None:
        """Make sure changes committed by other processes reach `notifier`."""
        ...

    async def vacuum(self) -> None:
        """Give back the space of deleted and rewritten rows."""
        ...

    async def hold_session(self, worker_id: str) -> None:
        """Start proving `worker_id` alive by a session of its own (if the dialect can)."""
        ...

    async def release_session(self, worker_id: str) -> None:
        """Stop proving it alive."""
        ...

    async def dead_sessions(self, worker_ids: list[str], *, me: str) -> list[str]:
        """Workers among `worker_ids` whose session is provably gone ([] if the dialect cannot
        tell)."""
        ...
