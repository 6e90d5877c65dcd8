"""Versions and replays in one process, on both stores: what an app's version is made of, runs
pinned at trigger, replays that reuse child runs' results, migration behind a replay check, and
the API's replay from a step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import perdure
from perdure.errors import InvalidArguments
from perdure.records import RunStatus
from perdure.versions import code_digest

from .conftest import running_worker, wait_until


def test_the_version_is_a_digest_of_the_code_unless_named(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERDURE_VERSION", raising=False)

    def build(**options: Any) -> perdure.App:
        app = make_app("digest", **options)

        @app.step(name="double")
        async def double(n: int) -> int:
            return n * 2

        @app.task(name="job")
        async def job(n: int) -> int:
            return await double(n)

        return app

    one, two = build(), build()
    assert one.version == two.version  # the same code: the same version
    assert one.version.startswith("code-")

    @one.step(name="extra")
    async def extra() -> None: ...

    assert one.version != two.version  # a step more: another version
    assert build(version="2026.11").version == "2026.11"
    monkeypatch.setenv("PERDURE_VERSION", "from-env")
    assert build().version == "from-env"

    def a(x: int) -> int:
        return x

    def b(x: int) -> int:
        return x + 1

    assert code_digest([("step", "s", a)]) != code_digest([("step", "s", b)])
    assert code_digest([("step", "s", a)]) != code_digest([("step", "t", a)])


async def test_a_run_pinned_at_trigger_waits_for_its_version(
    make_app: Callable[..., perdure.App],
) -> None:
    def build(version: str) -> perdure.App:
        app = make_app("pinned", version=version)

        @app.task(name="job")
        async def job() -> str:
            return version

        return app

    old, new = build("v1"), build("v2")
    pinned = await new.get_task("job").trigger(pin_version="v1")
    free = await new.get_task("job").trigger()
    with pytest.raises(InvalidArguments):
        await new.get_task("job").trigger(pin_version=2)
    async with running_worker(new):
        assert await free.result(timeout=30) == "v2"
        assert await pinned.status() is RunStatus.QUEUED  # not for a v2 worker
        assert [r.id for r in await new.admin.stranded()] == [pinned.id]
    async with running_worker(old):
        assert await pinned.result(timeout=30) == "v1"
    for app in (old, new):
        await app.close()


async def test_a_replay_reuses_the_results_of_child_runs_before_its_step(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app("children")
    calls: list[str] = []

    @app.task(name="child")
    async def child(n: int) -> int:
        calls.append(f"child {n}")
        return n * 10

    @app.step(name="mark")
    async def mark(what: str) -> str:
        calls.append(what)
        return what

    @app.task(name="parent", retry=perdure.Retry(max_attempts=1))
    async def parent(fail: bool) -> int:
        first = await child.trigger_and_wait(1)  # positions 1 and 2
        await mark("between")  # 3
        second = await child.trigger_and_wait(2)  # 4 and 5
        if fail:
            raise RuntimeError("broken after the children")
        return first + second

    async with running_worker(app):
        run = await parent.trigger(True)
        with pytest.raises(perdure.errors.TaskFailed):
            await run.result(timeout=30)
        assert calls == ["child 1", "between", "child 2"]

        with pytest.raises(InvalidArguments, match="replay from position 1"):
            await run.replay(from_step=2)  # would part child 1 from the wait for it
        again = await run.replay(from_step=3, args=[False])
        assert await again.result(timeout=30) == 30
        # child 1's result was reused; from position 3 on it ran again, with a new child 2
        assert calls == ["child 1", "between", "child 2", "between", "child 2"]
        everything = await run.replay(from_step=6, args=[False])
        assert await everything.result(timeout=30) == 30
        assert len(calls) == 5  # every step and child reused
    replayed = await app.store.get_run(again.id, values=False)
    assert replayed.replay_of == run.id
    await app.close()


async def test_migrate_moves_only_runs_that_replay_on_the_new_code(
    make_app: Callable[..., perdure.App],
) -> None:
    def build(version: str, step_name: str) -> perdure.App:
        app = make_app("moving", version=version)

        @app.step(name=step_name)
        async def first() -> str:
            return step_name

        @app.task(name="job")
        async def job() -> str:
            got = await first()
            await perdure.sleep(3600)
            return got

        return app

    v1 = build("v1", "first")
    async with running_worker(v1):
        runs = [await v1.get_task("job").trigger() for _ in range(2)]
        await wait_until(lambda: _all_waiting(runs), timeout=30)

    renamed = build("v2", "renamed")  # does not replay: moves nothing
    results = await renamed.admin.migrate_runs([r.id for r in runs])
    assert [(v.ok, moved) for v, moved in results] == [(False, False)] * 2
    assert results[0][0].recorded == "step first"
    assert results[0][0].called == "step renamed"

    same = build("v3", "first")  # replays: moves, but not on a dry run
    dry = await same.admin.migrate_runs([r.id for r in runs], dry_run=True)
    assert [(v.ok, moved) for v, moved in dry] == [(True, False)] * 2
    assert [(await v1.store.get_run(r.id, values=False)).version for r in runs] == ["v1"] * 2
    moved = await same.admin.migrate_runs([r.id for r in runs])
    assert [(v.ok, done) for v, done in moved] == [(True, True)] * 2
    assert [(await v1.store.get_run(r.id, values=False)).version for r in runs] == ["v3"] * 2
    for app in (v1, renamed, same):
        await app.close()


async def _all_waiting(handles: list[perdure.RunHandle[Any]]) -> bool:
    return all([await h.status() is RunStatus.WAITING for h in handles])
