"""The dashboard: server-rendered pages (Jinja2) over the App's admin API, refreshed in place by
HTMX (vendored in static/, no CDN). Signed in by an API key kept in an HttpOnly, SameSite=Strict
cookie; every action is a POST that carries a CSRF token derived from that key (or, on an open
`perdure dev` dashboard, from a secret of the process), checked in constant time."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from perdure import errors
from perdure.app import App
from perdure.records import RunStatus, Scope
from perdure.stats_records import RunStats
from perdure.views import (
    bytes_text,
    decoded,
    details_dict,
    duration_text,
    token_dict,
    value_json,
)
from perdure.wait_records import TokenStatus

COOKIE = "perdure_key"
"""The cookie that holds the signed-in API key."""
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
"""The overview's windows."""
PAGE = 50
"""Runs in one page of the runs list."""
SHOWN_STEPS = 200
"""Journal entries on a run's page at most: the first and the last half."""
SHOWN_FAILURES = 50
"""Failed attempts on a run's page at most: the latest."""
SHOWN_LOGS = 500
"""Log lines on a run's page at most: the first."""

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("perdure.server", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _time(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


_templates.filters.update(
    time=_time,
    duration=duration_text,
    bytes=bytes_text,
    pretty=lambda value: json.dumps(value, indent=2, sort_keys=True, default=repr),
)


class Session:
    """Who is looking: the key's scope (or an open dashboard's) and the CSRF token of its
    forms."""

    def __init__(self, scope: Scope, csrf: str) -> None:
        self.scope = scope
        self.csrf = csrf

    def may(self, needed: Scope | str) -> bool:
        return self.scope.allows(Scope(needed))


Page = Callable[[App, Request, Session], Awaitable[Response]]


class Dashboard:
    """The dashboard's routes for `app`; `open_access` (perdure dev on loopback) needs no key."""

    def __init__(self, app: App, *, open_access: bool = False) -> None:
        self.app = app
        self.open_access = open_access
        self._open_secret = secrets.token_bytes(32)

    def csrf_token(self, key: str | None) -> str:
        """The CSRF token of a session: a digest of its key, which a page of another site can
        neither read nor compute."""
        if key is None:
            return hmac.new(self._open_secret, b"perdure-csrf", hashlib.sha256).hexdigest()
        return hashlib.sha256(b"perdure-csrf:" + key.encode()).hexdigest()

    async def session(self, request: Request, needed: Scope) -> Session:
        """The request's session; Unauthorized (no key, a bad one) or Forbidden."""
        if self.open_access:
            return Session(Scope.ADMIN, self.csrf_token(None))
        key = request.cookies.get(COOKIE)
        record = await self.app.admin.authorize(key, needed)
        return Session(record.scope, self.csrf_token(key))

    def page(self, handler: Page, needed: Scope = Scope.READ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                session = await self.session(request, needed)
                if request.method == "POST":
                    form = await request.form()
                    if not _same(form, request, session.csrf):
                        return self.render(
                            request, "error.html", None, status=403, message="bad CSRF token"
                        )
                return await handler(self.app, request, session)
            except errors.Unauthorized:
                if request.method == "GET":
                    where = urlencode({"next": request.url.path})
                    return RedirectResponse(f"/login?{where}", status_code=303)
                return self.render(request, "error.html", None, status=401, message="sign in")
            except errors.Forbidden as exc:
                return self.render(request, "error.html", None, status=403, message=str(exc))
            except (errors.RunNotFound, errors.TaskNotFound, errors.TokenNotFound) as exc:
                return self.render(request, "error.html", None, status=404, message=str(exc))
            except (errors.PerdureError, ValueError) as exc:
                return self.render(request, "error.html", None, status=400, message=str(exc))

        return endpoint

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        html = _templates.get_template(template).render(
            app=self.app.name,
            session=session,
            open_access=self.open_access,
            path=request.url.path,
            **context,
        )
        headers = {
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
        }
        return HTMLResponse(html, status_code=status, headers=headers)

    # -- sign in -------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # no open redirect
        if request.method == "GET":
            return self.render(request, "login.html", None, next=target, failed=False)
        form = await request.form()
        key = str(form.get("key", "")).strip()
        try:
            await self.app.admin.authorize(key, Scope.READ)
        except errors.Unauthorized:
            return self.render(request, "login.html", None, status=401, next=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=12 * 3600,
        )
        return response

    async def logout(self, app: App, request: Request, session: Session) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def overview(self, app: App, request: Request, session: Session) -> Response:
        window = request.query_params.get("window", "24h")
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}")
        stats = await app.admin.stats(since=WINDOWS[window], app=app.name)
        failed = await app.admin.list_runs(status=RunStatus.FAILED, limit=10)
        return self.render(
            request,
            "overview.html",
            session,
            window=window,
            windows=list(WINDOWS),
            stats=stats,
            chart=_chart(stats),
            failed=failed,
        )

    async def runs(self, app: App, request: Request, session: Session) -> Response:
        q = request.query_params
        status = RunStatus(q["status"]) if q.get("status") else None
        filters = {k: q.get(k, "") for k in ("status", "task", "tag", "stranded")}
        if filters["stranded"]:  # pinned to a version no live worker runs
            found = await app.admin.stranded(limit=PAGE)
        else:
            found = await app.admin.list_runs(
                status=status,
                task=q.get("task") or None,
                tag=q.get("tag") or None,
                before=q.get("cursor") or None,
                limit=PAGE,
            )
        more = None
        if len(found) == PAGE:
            more = "?" + urlencode({**filters, "cursor": found[-1].id})
        return self.render(
            request,
            "runs.html",
            session,
            runs=found,
            filters=filters,
            statuses=[str(s) for s in RunStatus],
            tasks=sorted(app.tasks),
            more=more,
        )

    async def run(self, app: App, request: Request, session: Session) -> Response:
        details = await app.admin.run_details(request.path_params["id"])
        out = details_dict(details)
        chunks = [
            (position, name, value_json(decoded(value.data, value.codec)))
            for position, name, value in await app.admin.stream_chunks(details.run.id)
        ]
        logs = await app.admin.run_logs(details.run.id, limit=SHOWN_LOGS + 1)
        steps = _waterfall(out)
        hidden = max(0, len(steps) - SHOWN_STEPS)
        if hidden:
            steps = steps[: SHOWN_STEPS // 2] + steps[-(SHOWN_STEPS // 2) :]
        failures = [a for a in out["attempts"] if a["error"]]
        return self.render(
            request,
            "run.html",
            session,
            run=out,
            ended=details.run.status.terminal,
            steps=steps,
            hidden_steps=hidden,
            failures=failures[-SHOWN_FAILURES:],
            hidden_failures=max(0, len(failures) - SHOWN_FAILURES),
            chunks=chunks,
            logs=logs[:SHOWN_LOGS],
            more_logs=len(logs) > SHOWN_LOGS,
            known_task=details.run.task in app.tasks,
        )

    async def cancel(self, app: App, request: Request, session: Session) -> Response:
        await app.admin.cancel_run(request.path_params["id"])
        return RedirectResponse(f"/runs/{request.path_params['id']}", status_code=303)

    async def replay(self, app: App, request: Request, session: Session) -> Response:
        handle = await app.admin.replay(request.path_params["id"])
        return RedirectResponse(f"/runs/{handle.id}", status_code=303)

    async def queues(self, app: App, request: Request, session: Session) -> Response:
        found = await app.admin.queues(app.name)
        return self.render(request, "queues.html", session, queues=found)

    async def queue_action(self, app: App, request: Request, session: Session) -> Response:
        paused = request.path_params["action"] == "pause"
        await app.admin.set_queue(app.name, request.path_params["name"], paused=paused)
        return RedirectResponse("/queues", status_code=303)

    async def schedules(self, app: App, request: Request, session: Session) -> Response:
        found = await app.admin.schedules(app.name)
        return self.render(request, "schedules.html", session, schedules=found)

    async def schedule_action(self, app: App, request: Request, session: Session) -> Response:
        key = request.path_params["key"]
        if request.path_params["action"] == "pause":
            await app.admin.pause_schedule(app.name, key)
        else:
            await app.admin.resume_schedule(app.name, key)
        return RedirectResponse("/schedules", status_code=303)

    async def tokens(self, app: App, request: Request, session: Session) -> Response:
        shown = request.query_params.get("status", "waiting")
        found = await app.admin.tokens(
            app=app.name, status=TokenStatus(shown) if shown else None, limit=100
        )
        return self.render(
            request,
            "tokens.html",
            session,
            tokens=[token_dict(t) for t in found],
            shown=shown,
            statuses=[str(s) for s in TokenStatus],
        )

    async def complete_token(self, app: App, request: Request, session: Session) -> Response:
        form = await request.form()
        text = str(form.get("data", "")).strip() or "null"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the data is not JSON: {exc}") from None
        token = await app.admin.complete_token(request.path_params["id"], data)
        target = f"/runs/{token.run_id}" if token.run_id else "/tokens"
        return RedirectResponse(target, status_code=303)

    def routes(self) -> list[Route | Mount]:
        page, admin, trigger = self.page, Scope.ADMIN, Scope.TRIGGER
        return [
            Route("/", page(self.overview)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/runs", page(self.runs)),
            Route("/runs/{id}", page(self.run)),
            Route("/runs/{id}/cancel", page(self.cancel, admin), methods=["POST"]),
            Route("/runs/{id}/replay", page(self.replay, trigger), methods=["POST"]),
            Route("/queues", page(self.queues)),
            Route("/queues/{name}/{action:str}", page(self.queue_action, admin), methods=["POST"]),
            Route("/schedules", page(self.schedules)),
            Route(
                "/schedules/{key}/{action:str}",
                page(self.schedule_action, admin),
                methods=["POST"],
            ),
            Route("/tokens", page(self.tokens)),
            Route("/tokens/{id}/complete", page(self.complete_token, trigger), methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("perdure.server", "static")]), name="static"),
        ]


def _same(form: FormData, request: Request, expected: str) -> bool:
    given = str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")
    return hmac.compare_digest(given.encode(), expected.encode())


def _chart(stats: RunStats) -> dict[str, Any]:
    """Throughput bars for an inline SVG: completed and failed per slice, scaled to 100."""
    peak = max((done + failed for _, done, failed in stats.throughput), default=0) or 1
    bars = [
        {
            "at": at,
            "completed": done,
            "failed": failed,
            "done_h": 100 * done / peak,
            "failed_h": 100 * failed / peak,
        }
        for at, done, failed in stats.throughput
    ]
    return {"bars": bars, "peak": peak, "width": 100 / max(1, len(bars))}


def _waterfall(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each journal entry with its bar: where it starts and how long it lasts, as a percentage
    of the run's span so far."""
    entries: list[dict[str, Any]] = run["journal"]
    if not entries:
        return []
    start = min([run["started_at"] or entries[0]["started_at"], entries[0]["started_at"]])
    end = max(e["finished_at"] for e in entries)
    if run.get("finished_at"):
        end = max(end, run["finished_at"])
    span = max(end - start, 1e-6)
    return [
        {
            **e,
            "left": 100 * (e["started_at"] - start) / span,
            "width": max(0.5, 100 * (e["finished_at"] - e["started_at"]) / span),
        }
        for e in entries
    ]
