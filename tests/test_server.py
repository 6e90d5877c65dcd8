"""The REST API through httpx against a real `perdure server` on 127.0.0.1, with a real worker
process: API keys and scopes, runs, tokens, events, messages, queues, schedules, OpenAPI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import perdure
from perdure import webhooks

from .conftest import wait_until
from .served import SECRETS, Served


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "message"}
    return error


async def test_keys_and_scopes_guard_every_endpoint_but_health(served: Served) -> None:
    async with served.client(None) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"ok": True}
        assert (await anonymous.get("/readyz")).status_code == 200
        assert (await anonymous.get("/api/v1/openapi.json")).status_code == 401
        missing = await anonymous.get("/api/v1/runs")
        assert missing.status_code == 401
        assert _error(missing) == {"type": "Unauthorized", "message": "unauthorized"}
        wrong = await anonymous.get(
            "/api/v1/runs", headers={"Authorization": "Bearer pdk_0000000000000000_nope"}
        )
        assert wrong.status_code == 401
        assert _error(wrong)["message"] == "unauthorized"  # no detail of why
    async with served.client("read") as reader:
        assert (await reader.get("/api/v1/runs")).status_code == 200
        refused = await reader.post("/api/v1/tasks/add/trigger", json={"args": [1, 2]})
        assert refused.status_code == 403
        assert _error(refused)["type"] == "Forbidden"
    async with served.client("trigger") as trigger:
        made = await trigger.post("/api/v1/tasks/add/trigger", json={"args": [1, 2]})
        assert made.status_code == 201
        cancel = await trigger.post(f"/api/v1/runs/{made.json()['id']}/cancel")
        assert cancel.status_code == 403  # admin only
    record = next(k for k in await served.app.admin.api_keys() if k.name == "read")
    assert await served.app.admin.revoke_api_key(record.id)
    async with served.client("read") as revoked:
        assert (await revoked.get("/api/v1/runs")).status_code == 401
    assert nothing_triggered_by_refusals(await served.app.admin.list_runs(task="add"))


def nothing_triggered_by_refusals(runs: list[perdure.records.RunRecord]) -> bool:
    return len(runs) == 1  # only the trigger key's


async def test_trigger_get_list_and_result(served: Served) -> None:
    async with served.client("trigger") as api:
        made = await api.post(
            "/api/v1/tasks/add/trigger",
            json={"args": [2, 3], "idempotency_key": "k1", "tags": ["user:42"]},
        )
        run_id = made.json()["id"]
        again = await api.post(
            "/api/v1/tasks/add/trigger", json={"args": [2, 3], "idempotency_key": "k1"}
        )
        assert again.json() == {"id": run_id, "created": False}
        result = await api.get(f"/api/v1/runs/{run_id}/result", params={"wait": 30})
        assert result.json()["done"] is True
        assert result.json()["result"] == 5
        run = (await api.get(f"/api/v1/runs/{run_id}")).json()
        assert (run["status"], run["result"], run["tags"]) == ("completed", 5, ["user:42"])
        for i in range(4):
            await api.post("/api/v1/tasks/add/trigger", json={"args": [i, i]})
        first = (await api.get("/api/v1/runs", params={"limit": 3, "task": "add"})).json()
        second = (
            await api.get("/api/v1/runs", params={"limit": 3, "cursor": first["next"]})
        ).json()
        ids = [r["id"] for r in first["runs"] + second["runs"]]
        assert len(ids) == len(set(ids)) == 5
        assert second["next"] is None
        tagged = (await api.get("/api/v1/runs", params={"tag": "user:42"})).json()["runs"]
        assert [r["id"] for r in tagged] == [run_id]
        bad = await api.post("/api/v1/tasks/add/trigger", json={"args": ["x", 1]})
        assert bad.status_code == 422
        assert _error(bad)["type"] == "InvalidArguments"
        unknown = await api.post("/api/v1/tasks/nope/trigger", json={})
        assert unknown.status_code == 404
        assert _error(unknown)["type"] == "TaskNotFound"
        assert (await api.get("/api/v1/runs/nope")).status_code == 404


async def test_replay_and_stats(served: Served, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    async with served.client("trigger") as api:
        made = await api.post("/api/v1/tasks/fragile/trigger", json={"args": [str(flag)]})
        run_id = made.json()["id"]
        failed = (await api.get(f"/api/v1/runs/{run_id}/result", params={"wait": 30})).json()
        assert failed["status"] == "failed"
        assert "broken until" in failed["error"]["message"]
        logs = (await api.get(f"/api/v1/runs/{run_id}/logs")).json()
        mine = [line for line in logs if line["logger"] == "tests.waitapp"]
        assert [(line["level"], line["message"]) for line in mine] == [
            ("WARNING", f"{flag} is missing")
        ]
        assert all(line["position"] > 0 for line in logs)
        assert (await api.get("/api/v1/runs/nope/logs")).status_code == 404
        flag.touch()
        replayed = await api.post(f"/api/v1/runs/{run_id}/replay")
        assert replayed.status_code == 201
        new_id = replayed.json()["id"]
        assert new_id != run_id
        done = (await api.get(f"/api/v1/runs/{new_id}/result", params={"wait": 30})).json()
        assert (done["status"], done["result"]) == ("completed", "fixed")
        assert (await api.post("/api/v1/runs/nope/replay")).status_code == 404
        stats = (await api.get("/api/v1/stats", params={"since": 3600})).json()
        fragile = next(t for t in stats["tasks"] if t["task"] == "fragile")
        assert fragile["ended"] == {"completed": 1, "failed": 1}
        assert set(fragile["durations"]) == {"p50", "p95", "p99"}
        assert sum(b["failed"] for b in stats["throughput"]) == 1
        bad = await api.get("/api/v1/stats", params={"since": -1})
        assert bad.status_code == 422


async def test_tokens_events_and_messages(served: Served) -> None:
    async with served.client("admin") as api:
        approval = (await api.post("/api/v1/tasks/approval/trigger", json={"args": ["r1"]})).json()[
            "id"
        ]
        await wait_until(lambda: _tokens_of(api, approval), timeout=30)
        (token,) = (await api.get("/api/v1/tokens", params={"run": approval})).json()
        done = await api.post(f"/api/v1/tokens/{token['id']}/complete", json={"data": {"ok": True}})
        assert done.json()["status"] == "completed"
        twice = await api.post(f"/api/v1/tokens/{token['id']}/complete", json={"data": 1})
        assert twice.status_code == 409
        result = await api.get(f"/api/v1/runs/{approval}/result", params={"wait": 30})
        assert result.json()["result"] == {"ok": True}
        chat = (await api.post("/api/v1/tasks/chat/trigger", json={"args": [1]})).json()["id"]
        sent = await api.post(f"/api/v1/runs/{chat}/messages", json={"topic": "chat", "data": "hi"})
        assert sent.status_code == 202
        assert (await api.get(f"/api/v1/runs/{chat}/result", params={"wait": 30})).json()[
            "result"
        ] == ["hi"]
        event = await api.post("/api/v1/events", json={"name": "paid", "payload": {"n": 1}})
        assert event.json()["created"] is True
        assert (await api.post("/api/v1/tokens/nope/complete", json={})).status_code == 404


async def _tokens_of(api: httpx.AsyncClient, run_id: str) -> bool:
    return bool((await api.get("/api/v1/tokens", params={"run": run_id})).json())


async def test_queues_schedules_and_the_openapi_document(served: Served) -> None:
    async with served.client("admin") as api:
        paused = (await api.post("/api/v1/queues/default/pause")).json()
        assert any(q["name"] == "default" and q["paused"] for q in paused)
        resumed = (await api.post("/api/v1/queues/default/resume")).json()
        assert not any(q["paused"] for q in resumed)
        await served.app.schedules.create("tick", cron="0 9 * * *", key="nine")
        assert [s["key"] for s in (await api.get("/api/v1/schedules")).json()] == ["nine"]
        assert (await api.post("/api/v1/schedules/nine/pause")).json()["paused"] is True
        assert (await api.post("/api/v1/schedules/nine/resume")).json()["paused"] is False
        spec = (await api.get("/api/v1/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert {"/api/v1/runs", "/api/v1/tasks/{task}/trigger", "/api/v1/events"} <= set(
            spec["paths"]
        )
        assert {"TriggerRequest", "RunOut", "ErrorOut"} <= set(spec["components"]["schemas"])
        missing = await api.get("/api/v1/nothing-here")
        assert missing.status_code == 404
        assert _error(missing)["type"] == "NotFound"
    await asyncio.sleep(0)


async def test_the_python_client(served: Served) -> None:
    """perdure.Client: the same feel as a RunHandle, the server's errors as perdure's."""
    async with perdure.Client(served.url, api_key=served.keys["admin"]) as client:
        run = await client.trigger("add", 20, 22, idempotency_key="c1", tags=["client"])
        assert run.created
        assert await run.result(timeout=30) == 42
        assert await run.status() == "completed"
        again = await client.trigger("add", 20, 22, idempotency_key="c1")
        assert (again.id, again.created) == (run.id, False)
        assert [r["id"] for r in await client.runs(tag="client")] == [run.id]
        with pytest.raises(perdure.errors.InvalidArguments):
            await client.trigger("add", "x", 1)
        with pytest.raises(perdure.errors.TaskNotFound):
            await client.trigger("nope")
        approval = await client.trigger("approval", "r9")
        await wait_until(lambda: _status_is(approval, "waiting"), timeout=30)
        await approval.complete_token("approval", {"ok": 1})
        assert await approval.result(timeout=30) == {"ok": 1}
        chat = await client.trigger("chat", 1)
        await chat.send("chat", "hello")
        assert await chat.result(timeout=30) == ["hello"]
        slow = await client.trigger("chat", 1)
        with pytest.raises(perdure.errors.RunTimeout):
            await slow.result(timeout=0.5)
        assert await slow.cancel() in ("cancelled", "running")
        with pytest.raises(perdure.errors.RunCancelled):
            await slow.result(timeout=30)
        assert (await client.send_event("paid", {"n": 1}))["created"] is True
    async with perdure.Client(served.url, api_key="pdk_0_nope") as stranger:
        with pytest.raises(perdure.errors.Unauthorized):
            await stranger.runs()


async def _status_is(run: perdure.client.RemoteRun, status: str) -> bool:
    return await run.status() == status


async def test_realtime_events_over_sse_resume_from_the_last_chunk(served: Served) -> None:
    """A run streams words and sets its metadata from a worker process; a client follows it
    over SSE from the start, and one that comes back with the last chunk's id gets the rest."""
    read = perdure.Client(served.url, api_key=served.keys["read"])
    write = perdure.Client(served.url, api_key=served.keys["trigger"])
    async with read as reader, write as trigger:
        run = await trigger.trigger("narrate", ["durable", "runs"])
        seen: list[tuple[str, Any]] = []

        async def follow() -> None:
            async for kind, data in reader.run(run.id).events():
                seen.append((kind, data))

        following = asyncio.create_task(follow())
        await wait_until(lambda: _words(seen) == ["durable", "runs"], timeout=30)
        await wait_until(lambda: _status_is(run, "waiting"), timeout=30)
        await run.complete_token("more")
        await asyncio.wait_for(following, 30)
        assert _words(seen) == ["durable", "runs", "end"]
        statuses = [data["status"] for kind, data in seen if kind == "status"]
        assert statuses[-1] == "completed"
        assert {"said": 2} in [data for kind, data in seen if kind == "metadata"]
        # a subscriber that saw the first chunk (position 1) gets the others
        later = [d async for k, d in reader.run(run.id).events(after=1) if k == "chunk"]
        assert [c["data"] for c in later] == ["runs", "end"]


def _words(seen: list[tuple[str, Any]]) -> list[Any]:
    return [data["data"] for kind, data in seen if kind == "chunk"]


async def test_webhooks_trigger_once_per_signed_fresh_delivery(served: Served) -> None:
    body = json.dumps({"order": 7}).encode()
    secret = SECRETS["ORDERS_WEBHOOK_SECRET"]
    signed = {**webhooks.sign(secret, body), "X-Perdure-Delivery": "d-1"}
    async with served.client(None) as sender:  # no API key: the signature is the proof
        first = await sender.post("/webhooks/orders", content=body, headers=signed)
        assert first.status_code == 202
        assert first.json()["created"] is True
        replayed = await sender.post("/webhooks/orders", content=body, headers=signed)
        assert replayed.json() == {"run_id": first.json()["run_id"], "created": False}
        forged = {
            **signed,
            "X-Perdure-Delivery": "d-2",
            "X-Perdure-Signature": "sha256=" + "0" * 64,
        }
        assert (
            await sender.post("/webhooks/orders", content=body, headers=forged)
        ).status_code == 401
        stale = {
            **webhooks.sign(secret, body, timestamp=time.time() - 3600),
            "X-Perdure-Delivery": "d-3",
        }
        refused = await sender.post("/webhooks/orders", content=body, headers=stale)
        assert refused.status_code == 401
        assert _error(refused)["message"] == "unauthorized"
        other_key = {**webhooks.sign("not-the-secret", body), "X-Perdure-Delivery": "d-4"}
        assert (
            await sender.post("/webhooks/orders", content=body, headers=other_key)
        ).status_code == 401
        unsigned = await sender.post("/webhooks/orders", content=body)
        assert unsigned.status_code == 401
        assert (
            await sender.post("/webhooks/nope", content=body, headers=signed)
        ).status_code == 404
        # the senders' own conventions
        event = json.dumps({"id": "evt_1", "type": "payment"}).encode()
        t = str(int(time.time()))
        mac = hmac.new(
            SECRETS["STRIPE_WEBHOOK_SECRET"].encode(), f"{t}.".encode() + event, hashlib.sha256
        )
        stripe = {"Stripe-Signature": f"t={t},v1={mac.hexdigest()}"}
        assert (
            await sender.post("/webhooks/stripe", content=event, headers=stripe)
        ).status_code == 202
        gh = hmac.new(SECRETS["GITHUB_WEBHOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()
        github = {"X-Hub-Signature-256": f"sha256={gh}", "X-GitHub-Delivery": "g-1"}
        assert (
            await sender.post("/webhooks/github", content=body, headers=github)
        ).status_code == 202
    runs = await served.app.admin.list_runs(task="got")
    assert len(runs) == 3  # the first delivery once, Stripe's, GitHub's: nothing refused ran
    async with served.client("read") as api:
        result = await api.get(f"/api/v1/runs/{first.json()['run_id']}/result", params={"wait": 30})
        assert result.json()["result"] == {"order": 7}


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    served: Served, tmp_path: Path
) -> None:
    """Requests generated from the OpenAPI document (bounded in count, a fixed seed) by
    schemathesis, sent to the real server: never a 5xx, every response as documented."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{served.url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {served.keys['admin']}",
        "--max-examples",
        "10",
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance",
        "--seed",
        "20261130",
        "--no-color",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert "failed" not in done.stdout.split("SUMMARY")[-1]
