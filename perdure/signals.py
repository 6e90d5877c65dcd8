"""What the world outside a run sends it: token completions, events and messages (the App's
side of the waits in perdure.waits; the store keeps and matches them, see store/wait_ops.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from perdure import serde, values
from perdure.errors import ConfigurationError
from perdure.ids import new_id
from perdure.records import Value
from perdure.task import RunOptions
from perdure.wait_records import NewEvent, NewMessage, NewToken, Sent, Token, TokenRecord

if TYPE_CHECKING:
    from perdure.app import App
    from perdure.task import Task


def encode(app: App, value: Any, what: str) -> Value:
    """`value` as the App stores what it sends (msgpack, its size limit, the secret check)."""
    data = values.encode(value, codec=serde.Codec.MSGPACK, what=what, max_size=app.max_value_size)
    return Value(codec=str(serde.Codec.MSGPACK), data=data, raw_size=len(data))


class Signals:
    """The App's side of waits: `app.create_token`, `app.complete_token`, `app.send_event`
    (RunHandle.complete_token and RunHandle.send come here too)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.on_event: dict[str, list[Task[Any, Any]]] = {}
        """Tasks triggered by each event name (@app.task(on_event=...))."""

    def triggered_by(self, name: str, task: Task[Any, Any]) -> None:
        """Register `task` to run once per event `name`, with the payload as its argument."""
        if not name:
            raise ConfigurationError(f"task {task.name!r}: on_event needs an event name")
        try:
            task.signature.bind(None)
        except TypeError:
            raise ConfigurationError(
                f"task {task.name!r} is triggered by event {name!r}: it must take the "
                f"payload as its one argument, but its signature is {task.signature}"
            ) from None
        self.on_event.setdefault(name, []).append(task)

    async def create_token(
        self,
        *,
        timeout: float | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Token:
        store = self.app.store
        await store.open()
        made = await store.create_token(
            NewToken(
                id=new_id(),
                app=self.app.name,
                tags=list(tags),
                idempotency_key=idempotency_key,
                expires_at=None if timeout is None else store.now() + max(0.0, timeout),
            )
        )
        return Token(made.id)

    async def complete_token(
        self,
        data: Any,
        *,
        token_id: str | None = None,
        run_id: str | None = None,
        name: str | None = None,
        any_app: bool = False,
    ) -> TokenRecord:
        what = f"data of token {token_id or name!r}"
        return await self.app.store.complete_token(
            app=None if any_app else self.app.name,
            data=encode(self.app, data, what),
            token_id=token_id,
            run_id=run_id,
            name=name,
        )

    async def send_event(
        self, name: str, payload: Any, *, idempotency_key: str | None = None
    ) -> Sent:
        if not name:
            raise ConfigurationError("send_event needs an event name")
        event_id = new_id()
        encoded = encode(self.app, payload, f"payload of event {name!r}")
        store = self.app.store
        await store.open()
        runs = []
        for task in self.on_event.get(name, []):  # one run each, made with the event or never
            args = task.definition.encode_call((payload,), {})
            key = f"perdure:event:{event_id}"
            runs.append(RunOptions().new_run(task, args, idempotency_key=key))
        return await store.send_event(
            NewEvent(
                id=event_id,
                app=self.app.name,
                name=name,
                payload=encoded,
                idempotency_key=idempotency_key,
            ),
            runs=runs,
        )

    async def send_message(
        self, run_id: str, topic: str, data: Any, *, idempotency_key: str | None = None
    ) -> str:
        if not topic:
            raise ConfigurationError("a message needs a topic")
        message_id, _created = await self.app.store.send_message(
            NewMessage(
                id=new_id(),
                app=self.app.name,
                run_id=run_id,
                topic=topic,
                data=encode(self.app, data, f"message on {topic!r}"),
                idempotency_key=idempotency_key,
            )
        )
        return message_id
