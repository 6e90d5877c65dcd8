"""`perdure.Client`: the REST API of a `perdure server` from other services, with the feel of a
RunHandle in process:

    async with perdure.Client("http://host:8080", api_key=KEY) as client:
        run = await client.trigger("research", "llms", idempotency_key="order-42")
        print(await run.result(timeout=60))

Errors come back as the same perdure.errors classes the server raised (TaskNotFound,
InvalidArguments, TokenAlreadyCompleted, Unauthorized...). Needs httpx (extra `server`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from perdure import errors

MAX_WAIT = 60.0
"""Seconds the server waits for a result per request (its bound)."""


class Client:
    """A perdure server's API, authenticated by an API key."""

    def __init__(self, url: str, *, api_key: str, timeout: float = 30.0) -> None:
        try:
            import httpx
        except ImportError:
            raise errors.ConfigurationError(
                "perdure.Client needs httpx: pip install 'perdure[server]'"
            ) from None
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout + MAX_WAIT,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        response = await self._http.request(method, path, json=body, params=params)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    async def trigger(
        self,
        task: str,
        *args: Any,
        idempotency_key: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        ttl: float | None = None,
        concurrency_key: str | None = None,
        tags: Sequence[str] = (),
        **kwargs: Any,
    ) -> RemoteRun:
        """Start a run of `task` with these arguments (checked by the server against its
        signature); its handle."""
        body = {
            "args": list(args),
            "kwargs": kwargs,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "delay": delay,
            "ttl": ttl,
            "concurrency_key": concurrency_key,
            "tags": list(tags),
        }
        made = await self._call("POST", f"/api/v1/tasks/{task}/trigger", body)
        return RemoteRun(self, made["id"], created=made["created"])

    def run(self, run_id: str) -> RemoteRun:
        """The handle of an existing run."""
        return RemoteRun(self, run_id)

    async def runs(self, **filters: Any) -> list[dict[str, Any]]:
        """The first page of runs, newest first (filters: task, status, tag, since, until,
        limit, cursor)."""
        page = await self._call("GET", "/api/v1/runs", params=filters)
        runs: list[dict[str, Any]] = page["runs"]
        return runs

    async def complete_token(self, token_id: str, data: Any = None) -> dict[str, Any]:
        """Complete a token; TokenAlreadyCompleted when it was completed or timed out before."""
        done: dict[str, Any] = await self._call(
            "POST", f"/api/v1/tokens/{token_id}/complete", {"data": data}
        )
        return done

    async def send_event(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send an event: {"id", "created", "woken"}."""
        body = {"name": name, "payload": payload, "idempotency_key": idempotency_key}
        sent: dict[str, Any] = await self._call("POST", "/api/v1/events", body)
        return sent


class RemoteRun:
    """A run on the server: its id, and ways to follow it and talk to it."""

    def __init__(self, client: Client, run_id: str, *, created: bool = False) -> None:
        self.client = client
        self.id = run_id
        self.created = created
        """True when the trigger that made this handle created the run."""

    def __repr__(self) -> str:
        return f"RemoteRun({self.id!r})"

    async def get(self) -> dict[str, Any]:
        """The run, as the server shows it."""
        run: dict[str, Any] = await self.client._call("GET", f"/api/v1/runs/{self.id}")
        return run

    async def status(self) -> str:
        """Its status ("queued", "running", "waiting", "completed"...)."""
        return str((await self.get())["status"])

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its result: TaskFailed, RunCancelled,
        RunExpired as RunHandle.result does, RunTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = MAX_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            out = await self.client._call(
                "GET", f"/api/v1/runs/{self.id}/result", params={"wait": min(wait, MAX_WAIT)}
            )
            if out["done"]:
                return _outcome(self.id, out)
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.RunTimeout(f"run {self.id} is still {out['status']} after {timeout}s")

    async def cancel(self) -> str:
        """Cancel the run (an admin key); its status after the call."""
        out = await self.client._call("POST", f"/api/v1/runs/{self.id}/cancel")
        return str(out["status"])

    async def send(
        self, topic: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        """Put a message in the run's mailbox; the message id."""
        body = {"topic": topic, "data": data, "idempotency_key": idempotency_key}
        out = await self.client._call("POST", f"/api/v1/runs/{self.id}/messages", body)
        return str(out["id"])

    async def events(self, *, after: int = 0) -> AsyncIterator[tuple[str, Any]]:
        """(kind, data) of what happens to the run, as it happens, until it ends: "status",
        "metadata", "chunk" ({"stream", "data"}); a dropped connection is resumed from the last
        chunk seen (Last-Event-ID)."""
        import httpx

        last = after
        while True:
            headers = {"Last-Event-ID": str(last)}
            path = f"/api/v1/runs/{self.id}/stream"
            try:
                async with self.client._http.stream("GET", path, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    kind, data, ident = "message", "", None
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("id: "):
                            ident = line[4:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif line == "" and data:
                            if kind == "end":
                                return
                            if ident is not None:
                                last = int(ident)
                            yield kind, json.loads(data)
                            kind, data, ident = "message", "", None
                return
            except httpx.TransportError:
                await asyncio.sleep(0.5)  # resumed from the last chunk seen

    async def complete_token(self, name: str, data: Any = None) -> None:
        """Complete the run's named token (its wait_for_token(name))."""
        path = f"/api/v1/runs/{self.id}/tokens/{name}/complete"
        await self.client._call("POST", path, {"data": data})


def _outcome(run_id: str, out: dict[str, Any]) -> Any:
    status = out["status"]
    if status == "completed":
        return out.get("result")
    if status == "cancelled":
        raise errors.RunCancelled(f"run {run_id} was cancelled")
    if status == "expired":
        raise errors.RunExpired(f"run {run_id} expired: not started within its ttl")
    error = out.get("error") or {}
    raise errors.TaskFailed(
        f"run {run_id} failed: {error.get('type', 'unknown')}: {error.get('message', '')}",
        run_id=run_id,
        error_type=error.get("type", ""),
        error_message=error.get("message", ""),
        traceback=error.get("traceback", ""),
    )


def _error(response: Any) -> errors.PerdureError:
    """The perdure error the server answered with (by its type's name)."""
    return errors.from_answer(response.content, response.status_code)
