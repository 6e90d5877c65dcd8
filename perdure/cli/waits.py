"""`perdure tokens` and `perdure events`: complete and list tokens, send and list events."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from perdure.cli.common import (
    AppNameOpt,
    AppOpt,
    BlobOpt,
    DbOpt,
    JsonOpt,
    console,
    named_app,
    on_admin,
    time_text,
)
from perdure.views import token_dict
from perdure.wait_records import EventRecord, TokenStatus

tokens_cli = typer.Typer(help="Complete and list tokens (wait_for_token).", no_args_is_help=True)
events_cli = typer.Typer(help="Send and list events (wait_for_event).", no_args_is_help=True)

LimitOpt = Annotated[int, typer.Option(min=1, help="At most this many (newest first).")]


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not JSON: {exc}") from None


@tokens_cli.command("complete")
def tokens_complete(
    token_id: Annotated[str, typer.Argument(help="Token id.")],
    data: Annotated[str | None, typer.Option(help="The completion data, as JSON.")] = None,
    app: AppOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete a token: the runs waiting for it resume with DATA. A token completed or timed
    out before is refused (the first completion stands)."""
    value = _json_arg(data, "--data")
    token = on_admin(app, database, blobs, lambda admin: admin.complete_token(token_id, value))
    if as_json:
        print(json.dumps(token_dict(token)))
        return
    console.print(
        f"token {token.id} completed" + (f" (run {token.run_id})" if token.run_id else "")
    )


@tokens_cli.command("list")
def tokens_list(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's tokens.")] = None,
    status: Annotated[TokenStatus | None, typer.Option(help="Only tokens in this status.")] = None,
    limit: LimitOpt = 50,
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens, newest first."""
    name = named_app(app, app_name)
    found = on_admin(
        app,
        database,
        blobs,
        lambda admin: admin.tokens(app=name, run_id=run, status=status, limit=limit),
    )
    if as_json:
        print(json.dumps([token_dict(t) for t in found]))
        return
    table = Table("id", "status", "run", "name", "tags", "created", "expires", "completed")
    for t in found:
        table.add_row(
            t.id,
            str(t.status),
            t.run_id or "",
            t.name or "",
            ",".join(t.tags),
            time_text(t.created_at),
            time_text(t.expires_at),
            time_text(t.completed_at),
        )
    console.print(table)


def _event_dict(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "app": event.app,
        "name": event.name,
        "idempotency_key": event.idempotency_key,
        "created_at": event.created_at,
        "payload_size": None if event.payload is None else event.payload.raw_size,
    }


@events_cli.command("send")
def events_send(
    name: Annotated[str, typer.Argument(help="Event name, e.g. order.paid.")],
    payload: Annotated[str | None, typer.Option(help="The payload, as JSON.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Sent once per key: a repeat does nothing.")
    ] = None,
    app: Annotated[str, typer.Option("--app", help="MODULE:APP that sends it.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Send an event: wakes the runs waiting for it whose match it fits, and triggers the
    app's tasks declared with on_event=NAME."""
    if not app:
        raise typer.BadParameter("give --app MODULE:APP (its tasks may be triggered by it)")
    value = _json_arg(payload, "--payload")
    sent = on_admin(
        app,
        None,
        None,
        lambda admin: admin.send_event(name, value, idempotency_key=idempotency_key),
    )
    if as_json:
        print(json.dumps({"id": sent.id, "created": sent.created, "woken": sent.woken}))
        return
    if not sent.created:
        console.print(f"event {sent.id} was sent before with this key: nothing done again")
        return
    console.print(f"event {sent.id} sent; {len(sent.woken)} waiting run(s) woken")


@events_cli.command("list")
def events_list(
    name: Annotated[str | None, typer.Option("--name", help="Only events of this name.")] = None,
    limit: LimitOpt = 50,
    app: AppOpt = None,
    app_name: AppNameOpt = None,
    database: DbOpt = None,
    blobs: BlobOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List events, newest first."""
    app_filter = named_app(app, app_name)
    found = on_admin(
        app, database, blobs, lambda admin: admin.events(app=app_filter, name=name, limit=limit)
    )
    if as_json:
        print(json.dumps([_event_dict(e) for e in found]))
        return
    table = Table("id", "app", "name", "sent", "key", "payload bytes")
    for e in found:
        table.add_row(
            e.id,
            e.app,
            e.name,
            time_text(e.created_at),
            e.idempotency_key or "",
            "" if e.payload is None else str(e.payload.raw_size),
        )
    console.print(table)
