"""Waits on the outside world, written once for both dialects: tokens, events and run mailboxes,
and the waits runs register for them (part of SQLStore; see sql.py).

How a wait never misses what it waits for: a run registers its wait (kept per journal position,
so its deadline and look-back survive replays), then looks for what ended it; if nothing has,
it suspends. Whoever completes a token, sends an event or a message *signals* each run that
registered a wait for it: the run's `signals` count goes up, and a run already suspended for
that key is claimable at once. A run that suspends compares the count with what its claim saw
(finish_attempt), so a signal sent while it was still running wakes it too. Registration and
signalling of one key are ordered (a token's row lock; an event name's lock on PostgreSQL;
SQLite's single writer), so each side sees the other.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from perdure import serde
from perdure.errors import (
    NonDeterminismError,
    PerdureError,
    RunNotFound,
    TokenAlreadyCompleted,
    TokenNotFound,
)
from perdure.records import Lease, NewRun, RunStatus, Value
from perdure.store.connector import Operation, Query, Row, rows_of
from perdure.store.notify import CLAIMABLE
from perdure.store.rows import Operations, check_held, insert_run
from perdure.wait_records import (
    EventRecord,
    NewEvent,
    NewMessage,
    NewToken,
    Sent,
    TokenRecord,
    TokenStatus,
    Wait,
    WaitKind,
    WaitState,
    named_token_id,
    wait_key,
)

_SIGNAL_LOCK_CLASS = 7_366_104  # (PostgreSQL) advisory lock class of waits and signals by key
_EVENT_SCAN = 1000  # events of one name a wait looks through at once


class WaitOperations(Operations):
    """Tokens, events, mailboxes and waits over `db` (the part of SQLStore they make)."""

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(self, token: NewToken) -> TokenRecord:
        params = {
            "id": token.id,
            "app": token.app,
            "run_id": token.run_id,
            "name": token.name,
            "tags": json.dumps(token.tags),
            "idempotency_key": token.idempotency_key,
            "now": self.now(),
            "expires_at": token.expires_at,
        }

        def create() -> Operation[Row]:
            yield Query("insert_token", params)
            made: Row = (yield Query("token_like", params)).first
            return made

        return await self._token(await self.db.write(create, "create_token"))

    async def get_token(self, token_id: str) -> TokenRecord:
        rows = await self._one("token", {"id": token_id}, "get_token")
        if not rows:
            raise TokenNotFound(f"no token with id {token_id!r}")
        return await self._token(rows[0])

    async def list_tokens(
        self,
        *,
        app: str | None = None,
        run_id: str | None = None,
        status: TokenStatus | None = None,
        limit: int = 100,
    ) -> list[TokenRecord]:
        params = {
            "app": app,
            "run_id": run_id,
            "status": None if status is None else str(status),
            "now": self.now(),
            "limit": limit,
        }
        rows = await self._one("list_tokens", params, "list_tokens")
        return [await self._token(row, fetch=False) for row in rows]

    async def complete_token(
        self,
        *,
        app: str | None,
        data: Value,
        token_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
    ) -> TokenRecord:
        now = self.now()
        columns = self.values.columns("data", await self.values.offload(data))
        made = {
            "id": named_token_id(run_id or "", name or ""),
            "app": app,
            "run_id": run_id,
            "name": name,
            "now": now,
        }

        def complete() -> Operation[Row]:
            if token_id is not None:
                row = (yield Query("token", {"id": token_id})).first
            else:  # a run's named token, made now if the run has not made it yet
                run = (yield Query("run_for_message", {"run_id": run_id})).first
                if run is None or app not in (None, run["app"]):
                    raise RunNotFound(f"no run with id {run_id!r} in app {app!r}")
                made["app"] = run["app"]
                row = (yield Query("named_token", made)).first
                if row is None:
                    row = (yield Query("insert_completed_token", {**made, **columns})).first
                    if row is not None:  # nobody waits on it yet: the run will find it completed
                        return typing.cast(Row, row)
                    row = (yield Query("named_token", made)).first  # made meanwhile
            if row is None or app not in (None, row["app"]):
                raise TokenNotFound(f"no token with id {token_id!r}" + _in(app))
            target = row["id"]
            done: Row | None = (
                yield Query("complete_token", {"id": target, "now": now, **columns})
            ).first
            if done is None:
                raise _not_completed(target, row, now)
            yield from self._signal(row["app"], WaitKind.TOKEN, target, now)
            return done

        row = await self.db.write(complete, "complete_token", (CLAIMABLE,))
        return await self._token(row)

    # -- events ------------------------------------------------------------------------------

    async def send_event(self, event: NewEvent, *, runs: list[NewRun] | None = None) -> Sent:
        now = self.now()
        params = {
            "id": event.id,
            "app": event.app,
            "name": event.name,
            "idempotency_key": event.idempotency_key,
            "now": now,
            **self.values.columns("payload", await self.values.offload(event.payload)),
        }
        # the runs it triggers are created with it, or not at all (a repeated key: neither)
        triggered = await self._new_runs_params(runs or [], now)
        lock = {"lock_class": _SIGNAL_LOCK_CLASS, "key": f"{event.app}:event:{event.name}"}

        payload = _decoded(event.payload, f"event {event.name!r}")
        key = wait_key(WaitKind.EVENT, event.name)

        def send() -> Operation[tuple[str, bool, list[str]]]:
            # one transaction: the event, the runs it triggers and the signals of its waiters,
            # so no crash can keep an event and lose a wake-up
            yield Query("lock_signal", lock)
            if (yield Query("insert_event", params)).rowcount != 1:
                first = (yield Query("event_by_idempotency_key", params)).first
                return str(first["id"]), False, []
            for run in triggered:
                yield from insert_run(run)
            waiters = (
                yield Query("waiters", {"app": event.app, "kind": "event", "key": event.name})
            ).rows
            woken = sorted({row["run_id"] for row in waiters if self._fits(row, payload)})
            if woken:
                yield Query("signal_runs", {"ids": woken, "waiting_for": key, "now": now})
            return event.id, True, woken

        event_id, created, woken = await self.db.write(send, "send_event", (CLAIMABLE,))
        if not created:
            return Sent(id=event_id, created=False, woken=[])
        return Sent(id=event_id, created=True, woken=woken)

    async def list_events(
        self, *, app: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        params = {"app": app, "name": name, "limit": limit}
        rows = await self._one("list_events", params, "list_events")
        return [await self._event(row, fetch=False) for row in rows]

    # -- mailboxes ---------------------------------------------------------------------------

    async def send_message(self, message: NewMessage) -> tuple[str, bool]:
        now = self.now()
        params = {
            "id": message.id,
            "app": message.app,
            "run_id": message.run_id,
            "topic": message.topic,
            "idempotency_key": message.idempotency_key,
            "now": now,
            **self.values.columns("data", await self.values.offload(message.data)),
        }
        key = wait_key(WaitKind.MESSAGE, message.topic)

        def send() -> Operation[tuple[str, bool]]:
            run = (yield Query("run_for_message", params)).first
            if run is None or run["app"] != message.app:
                raise RunNotFound(f"no run with id {message.run_id!r} in app {message.app!r}")
            if RunStatus(run["status"]).terminal:
                raise PerdureError(
                    f"run {message.run_id} has ended ({run['status']}): nothing can receive "
                    f"a message on {message.topic!r} any more"
                )
            if (yield Query("insert_message", params)).rowcount != 1:
                first = (yield Query("message_by_idempotency_key", params)).first
                return str(first["id"]), False
            signal = {"ids": [message.run_id], "waiting_for": key, "now": now}
            yield Query("signal_runs", signal)
            return message.id, True

        return await self.db.write(send, "send_message", (CLAIMABLE,))

    # -- waits -------------------------------------------------------------------------------

    async def begin_wait(self, wait: Wait, lease: Lease) -> WaitState:
        """Register `wait` (the first registration at its position stands) and say whether it
        is over: what ended it, or that it timed out, or that it goes on (then the run
        suspends; a signal for it wakes the run)."""
        now = self.now()
        params = {
            "run_id": wait.run_id,
            "seq": wait.seq,
            "app": wait.app,
            "kind": str(wait.kind),
            "key": wait.key,
            "since": wait.since,
            "deadline": wait.deadline,
            "now": now,
            **self.values.columns("match", await self.values.offload(wait.match)),
        }
        token = None
        if wait.token is not None:
            token = {
                "id": wait.token.id,
                "app": wait.app,
                "run_id": wait.run_id,
                "name": wait.token.name,
                "tags": "[]",
                "idempotency_key": None,
                "now": now,
                "expires_at": wait.token.expires_at,
            }
        lock = {"lock_class": _SIGNAL_LOCK_CLASS, "key": f"{wait.app}:{wait.kind}:{wait.key}"}

        def register() -> Operation[tuple[Row, Row | None]]:
            check_held(wait.run_id, (yield Query("check_lease", {"id": wait.run_id})).first, lease)
            if token is not None:
                yield Query("insert_token", token)
            yield Query("lock_signal", lock)
            yield Query("insert_wait", params)
            row = (yield Query("wait_at", params)).first
            _same_wait(wait, row)
            found: Row | None = None
            if wait.kind is WaitKind.TOKEN:
                found = (yield Query("token_held", {"id": wait.key})).first
                if found is None:
                    raise TokenNotFound(f"no token with id {wait.key!r}")
                if found["status"] == TokenStatus.WAITING and _due(found["expires_at"], now):
                    yield Query("time_out_token", {"id": wait.key, "now": now})
                    found = {**found, "status": str(TokenStatus.TIMED_OUT)}
            elif wait.kind is WaitKind.MESSAGE:
                found = (yield Query("message_taken", params)).first
                if found is None:
                    found = (yield Query("next_message", {**params, "topic": wait.key})).first
                    if found is not None:
                        yield Query("take_message", {"id": found["id"], "seq": wait.seq})
            elif row["event_id"] is not None:
                found = (yield Query("event", {"id": row["event_id"]})).first
            return row, found

        row, found = await self.db.write(register, "begin_wait")
        state = WaitState(over=False, deadline=row["deadline"], since=row["since"])
        if wait.kind is WaitKind.TOKEN:
            assert found is not None
            expires = found["expires_at"]  # the token's own timeout ends the wait too
            if expires is not None and (state.deadline is None or expires < state.deadline):
                state = WaitState(over=False, deadline=expires, since=state.since)
            if found["status"] == TokenStatus.COMPLETED:
                return _over(state, await self._token_data(found), found["id"])
            if found["status"] == TokenStatus.TIMED_OUT:
                return _timed_out(state)
        elif wait.kind is WaitKind.MESSAGE:
            if found is not None:
                return _over(state, await self.values.from_columns(found, "data"), found["id"])
        else:
            if found is None:
                found = await self._first_event(wait, row, lease)
            if found is not None:
                return _over(state, await self.values.from_columns(found, "payload"), found["id"])
        if _due(state.deadline, now):
            return _timed_out(state)
        return state

    async def run_waits(self, run_id: str, *, values: bool = True) -> list[Wait]:
        """The waits a run registered, in journal order (for `runs show`)."""
        rows = await self.db.read(
            lambda: rows_of(Query("run_waits", {"run_id": run_id})), "run_waits"
        )
        return [
            Wait(
                run_id=row["run_id"],
                seq=row["seq"],
                app=row["app"],
                kind=WaitKind(row["kind"]),
                key=row["key"],
                match=await self.values.from_columns(row, "match", fetch=values),
                since=row["since"],
                deadline=row["deadline"],
            )
            for row in rows
        ]

    async def _first_event(self, wait: Wait, row: Row, lease: Lease) -> Row | None:
        """The first event since the wait began that fits its match, now ended with it."""
        match = await self._match(row)
        since = row["since"]
        taken = {  # an event ends at most one of a run's waits (the look-back would repeat it)
            taken["event_id"]
            for taken in await self.db.read(
                lambda: rows_of(Query("events_taken", {"run_id": wait.run_id})), "events_taken"
            )
        }
        while True:
            events = await self._events_since(wait.app, wait.key, since)
            for event in events:
                if event["id"] in taken:
                    continue
                payload = _decoded(
                    await self.values.from_columns(event, "payload"), f"event {wait.key!r}"
                )
                if _matches(match, payload):
                    return await self._take_event(wait, event["id"], lease)
            if len(events) < _EVENT_SCAN:
                return None
            since = events[-1]["created_at"]  # (ties are read again: harmless)

    async def _events_since(self, app: str, name: str, since: float) -> Sequence[Row]:
        params = {"app": app, "name": name, "since": since, "limit": _EVENT_SCAN}
        return await self._one("events_since", params, "events_since")

    async def _take_event(self, wait: Wait, event_id: str, lease: Lease) -> Row | None:
        """End `wait` with the event `event_id` (unless it ended already: then with its own)."""
        resolve = {"run_id": wait.run_id, "seq": wait.seq, "event_id": event_id}

        def take() -> Operation[Row | None]:
            check_held(wait.run_id, (yield Query("check_lease", {"id": wait.run_id})).first, lease)
            yield Query("resolve_wait", resolve)
            taken = (yield Query("wait_at", resolve)).first
            event: Row | None = (yield Query("event", {"id": taken["event_id"]})).first
            return event

        return await self.db.write(take, "resolve_wait")

    # -- signals and rows --------------------------------------------------------------------

    @staticmethod
    def _signal(app: str, kind: WaitKind, key: str, now: float) -> Operation[None]:
        """Signal every run waiting for (kind, key): see the module's docstring."""
        yield Query("lock_signal", {"lock_class": _SIGNAL_LOCK_CLASS, "key": f"{app}:{kind}:{key}"})
        waiters = (yield Query("waiters", {"app": app, "kind": str(kind), "key": key})).rows
        ids = sorted({row["run_id"] for row in waiters})
        if ids:
            yield Query("signal_runs", {"ids": ids, "waiting_for": wait_key(kind, key), "now": now})

    async def _token_data(self, row: Row) -> Value:
        value = await self.values.from_columns(row, "data")
        return value if value is not None else Value(codec=str(serde.Codec.MSGPACK), data=b"\xc0")

    def _fits(self, row: Row, payload: Any) -> bool:
        """Whether a waiter's match fits `payload`, within a transaction (no await): a match
        kept in the blob store (larger than the inline limit) is signalled all the same, and its
        run looks for itself (a wake-up too many is harmless, one too few is not)."""
        if row["match_codec"] is None:
            return True
        if row["match_blob"] is not None:
            return True
        value = self.values.inline(
            row["match_codec"], row["match"], row["match_raw_size"], row["match_stored_size"]
        )
        return _matches(dict(_decoded(value, "an event wait's match")), payload)

    async def _match(self, row: Row) -> Mapping[str, Any]:
        value = await self.values.from_columns(row, "match")
        return {} if value is None else dict(_decoded(value, "an event wait's match"))

    async def _token(self, row: Row, *, fetch: bool = True) -> TokenRecord:
        status = TokenStatus(row["status"])
        if status is TokenStatus.WAITING and _due(row["expires_at"], self.now()):
            status = TokenStatus.TIMED_OUT
        return TokenRecord(
            id=row["id"],
            app=row["app"],
            run_id=row["run_id"],
            name=row["name"],
            status=status,
            data=await self.values.from_columns(row, "data", fetch=fetch),
            tags=json.loads(row["tags"] or "[]"),
            idempotency_key=row["idempotency_key"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            completed_at=row["completed_at"],
        )

    async def _event(self, row: Row, *, fetch: bool = True) -> EventRecord:
        payload = await self.values.from_columns(row, "payload", fetch=fetch)
        assert payload is not None
        return EventRecord(
            id=row["id"],
            app=row["app"],
            name=row["name"],
            payload=payload,
            idempotency_key=row["idempotency_key"],
            created_at=row["created_at"],
        )


def _in(app: str | None) -> str:
    return "" if app is None else f" in app {app!r}"


def _due(deadline: float | None, now: float) -> bool:
    return deadline is not None and deadline <= now


def _over(state: WaitState, value: Value | None, source: str) -> WaitState:
    return WaitState(
        over=True, value=value, deadline=state.deadline, since=state.since, source=source
    )


def _timed_out(state: WaitState) -> WaitState:
    return WaitState(over=True, timed_out=True, deadline=state.deadline, since=state.since)


def _decoded(value: Value | None, what: str) -> Any:
    if value is None:
        return None
    return serde.decode(value.data, codec=serde.Codec(value.codec), what=what)


def _matches(match: Mapping[str, Any], payload: Any) -> bool:
    """Whether an event's payload holds every field of a wait's match, with equal values."""
    if not match:
        return True
    if not isinstance(payload, Mapping):
        return False
    return all(field in payload and payload[field] == want for field, want in match.items())


def _same_wait(wait: Wait, row: Row) -> None:
    """The wait registered at this position is the one asked for again (a replay)."""
    if row["kind"] != wait.kind or row["key"] != wait.key:
        raise NonDeterminismError(
            f"run {wait.run_id}: at journal position {wait.seq} the task now waits for "
            f"{wait.kind} {wait.key!r}, but it had registered a wait for {row['kind']} "
            f"{row['key']!r}. The task's code changed under a running run, or it branches on "
            "something unrecorded"
        )


def _not_completed(token_id: str, row: Row | None, now: float) -> Exception:
    """Why a completion changed nothing."""
    if row is None:
        return TokenNotFound(f"no token with id {token_id!r}")
    if row["status"] == TokenStatus.COMPLETED:
        return TokenAlreadyCompleted(
            f"token {token_id} was completed already (the first completion stands)"
        )
    return TokenAlreadyCompleted(f"token {token_id} timed out: it can no longer be completed")
