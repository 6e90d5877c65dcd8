"""What a run shows while it runs: tags to find it by, metadata set from its code and read at
once, and streams read from the start by late subscribers — on both stores."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import perdure
from perdure.errors import InvalidArguments, PayloadTooLarge, PerdureError
from perdure.retention import purge

from .conftest import ROOT, running_worker, table_rows, wait_until


async def test_runs_are_found_by_their_tags(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def job(n: int) -> int:
        return n

    a = await job.trigger(1, tags=["user:42", "beta"])
    b = await job.trigger(2, tags=["user:7"])
    await job.trigger(3)
    assert [r.id for r in await app.admin.list_runs(tag="user:42")] == [a.id]
    assert [r.id for r in await app.admin.list_runs(tag="user:7")] == [b.id]
    assert (await app.store.get_run(a.id)).tags == ("user:42", "beta")
    assert len(await app.admin.list_runs()) == 3
    assert await app.admin.list_runs(tag="nobody") == []
    assert sorted(table_rows(app, "run_tags")) == sorted(
        [("user:42", a.id), ("beta", a.id), ("user:7", b.id)]
    )
    with pytest.raises(InvalidArguments, match="tags must be a list of strings"):
        await job.trigger(4, tags="user:42")
    with pytest.raises(InvalidArguments, match="at most 20 tags"):
        await job.trigger(4, tags=[f"t{i}" for i in range(21)])
    await app.close()


async def test_metadata_is_seen_at_once_and_survives_a_resume(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    go = asyncio.Event()

    @app.step
    async def wait_for_go() -> None:
        await go.wait()

    @app.task
    async def job() -> dict[str, Any]:
        perdure.metadata.set("progress", 0.4)
        perdure.metadata.set("stage", "fetching")
        await wait_for_go()
        await perdure.sleep(0.2)  # suspends: the rest runs on a replay
        perdure.metadata.set("progress", 1.0)
        return perdure.metadata.current()

    async with running_worker(app):
        handle = await job.trigger()
        await wait_until(lambda: _metadata_is(handle, {"progress": 0.4, "stage": "fetching"}))
        go.set()
        assert await handle.result(timeout=10) == {"progress": 1.0, "stage": "fetching"}
    assert await handle.metadata() == {"progress": 1.0, "stage": "fetching"}
    with pytest.raises(PerdureError, match="only available inside a run"):
        perdure.metadata.set("x", 1)
    await app.close()


async def _metadata_is(handle: perdure.RunHandle[Any], wanted: dict[str, Any]) -> bool:
    return await handle.metadata() == wanted


async def test_a_sync_task_sets_metadata_and_streams(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    def job(words: list[str]) -> int:
        for i, word in enumerate(words):
            perdure.stream("words", word)
            perdure.metadata.set("done", i + 1)
        return len(words)

    async with running_worker(app):
        handle = await job.trigger(["a", "b", "c"])
        assert await handle.result(timeout=10) == 3
        assert [chunk async for chunk in handle.stream("words")] == ["a", "b", "c"]
    assert await handle.metadata() == {"done": 3}
    await app.close()


async def test_a_stream_is_read_live_and_from_the_start_by_a_late_subscriber(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()
    release = asyncio.Event()

    @app.step
    async def pause() -> None:
        await release.wait()

    @app.task
    async def answer(question: str) -> str:
        for token in ["durable", " ", "execution"]:
            await perdure.stream("answer", token)
        await pause()
        await perdure.stream("answer", "!")
        await perdure.stream("other", {"n": 1})
        return "done"

    async with running_worker(app):
        handle = await answer.trigger("what?")
        live: list[Any] = []

        async def follow() -> None:
            async for token in handle.stream("answer", timeout=20):
                live.append(token)

        following = asyncio.create_task(follow())
        await wait_until(lambda: len(live) == 3)
        release.set()
        await asyncio.wait_for(following, 20)
        assert live == ["durable", " ", "execution", "!"]
        late = [token async for token in handle.stream("answer")]  # after the end: everything
        assert late == live
        assert [c async for c in handle.stream("other")] == [{"n": 1}]
    await app.close()


async def test_chunks_and_metadata_are_bounded(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()

    @app.task
    async def big() -> list[str]:
        errors = []
        try:
            await perdure.stream("s", "x" * 70_000)
        except PayloadTooLarge as exc:
            errors.append(type(exc).__name__)
        try:
            perdure.metadata.set("k", "y" * 70_000)
        except PayloadTooLarge as exc:
            errors.append(type(exc).__name__)
        return errors

    async with running_worker(app):
        handle = await big.trigger()
        assert await handle.result(timeout=10) == ["PayloadTooLarge", "PayloadTooLarge"]
    assert await handle.metadata() == {}
    await app.close()


def _cli(database: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "perdure", *args, "--database", database, "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


async def test_the_cli_lists_runs_by_tag_and_shows_tags_and_metadata(
    make_sqlite_app: Callable[..., perdure.App],
) -> None:
    app = make_sqlite_app()

    @app.task
    async def job() -> None:
        perdure.metadata.set("progress", 1.0)

    async with running_worker(app):
        handle = await job.trigger(tags=["user:42"])
        await handle.result(timeout=10)
        await job.trigger()
    listed = await asyncio.to_thread(_cli, app.database, "runs", "list", "--tag", "user:42")
    assert [r["id"] for r in listed] == [handle.id]
    shown = await asyncio.to_thread(_cli, app.database, "runs", "show", handle.id)
    assert shown["tags"] == ["user:42"]
    assert shown["metadata"] == {"progress": 1.0}
    await app.close()


async def test_a_purged_run_takes_its_streams_and_tags_with_it(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def talk() -> None:
        await perdure.stream("s", "hello")

    async with running_worker(app):
        handle = await talk.trigger(tags=["user:1", "beta"])
        await handle.result(timeout=10)
    kept = await talk.trigger(tags=["user:1"], delay=3600)
    assert len(await app.store.read_stream(handle.id, "s")) == 1
    report = await purge(app.store, app.store.blobs, older_than=0)
    assert report.runs == 1
    assert await app.store.read_stream(handle.id, "s") == []
    assert table_rows(app, "run_tags") == [("user:1", kept.id)]
    assert [r.id for r in await app.admin.list_runs(tag="user:1")] == [kept.id]
    await app.close()


async def test_following_a_stream_gives_up_after_its_timeout(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def stuck() -> None:
        await perdure.stream("s", "first")
        await perdure.wait_for_token("never", timeout=600)

    async with running_worker(app):
        handle = await stuck.trigger()
        got: list[Any] = []

        async def follow() -> None:
            async for chunk in handle.stream("s", timeout=0.5):
                got.append(chunk)

        with pytest.raises(perdure.errors.RunTimeout, match="still"):
            await follow()
        assert got == ["first"]
        await handle.cancel()
    await app.close()
