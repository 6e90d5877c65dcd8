"""perdure.continue_as_new on both stores: a looping agent ends each run after ten turns and
continues as a new one with a short journal; the first run's handle gives the chain's result;
each turn runs once; arguments that do not fit fail the run; a child run cannot continue."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import perdure
from perdure.records import RunStatus

from .conftest import running_worker

ONCE = perdure.Retry(max_attempts=1)


def _agent_app(make_app: Callable[..., perdure.App], turns: list[int]) -> perdure.App:
    app = make_app()

    @app.step(name="think")
    async def think(turn: int) -> int:
        turns.append(turn)
        return turn

    @app.task(name="agent")
    async def agent(turn: int, until: int) -> int:
        for _ in range(10):
            if turn == until:
                return turn
            await think(turn)
            turn += 1
        perdure.continue_as_new(turn, until)

    @app.task(name="misfit", retry=ONCE)
    async def misfit(n: int) -> int:
        perdure.continue_as_new(n, "too", "many")

    @app.task(name="child", retry=ONCE)
    async def child() -> None:
        perdure.continue_as_new()

    @app.task(name="parent", retry=ONCE)
    async def parent() -> None:
        await child.trigger_and_wait()

    return app


async def test_a_looping_agent_continues_as_new_runs_with_short_journals(
    make_app: Callable[..., perdure.App],
) -> None:
    turns: list[int] = []
    app = _agent_app(make_app, turns)
    async with running_worker(app):
        first = await app.get_task("agent").trigger(0, 35)
        assert await first.result(timeout=30) == 35  # the chain's last run's result
    assert turns == list(range(35))  # each turn once
    chain: list[perdure.records.RunRecord] = []
    run_id: str | None = first.id
    while run_id is not None:
        run = await app.store.get_run(run_id)
        chain.append(run)
        run_id = run.continued_as
    assert [r.status for r in chain] == [RunStatus.COMPLETED] * 4
    journals = [len(await app.store.load_journal(r.id, values=False)) for r in chain]
    assert journals == [10, 10, 10, 5]  # none grows with the whole history
    assert [r.result is None for r in chain] == [True, True, True, False]
    await app.close()


async def test_continue_as_new_refuses_misfit_arguments_and_child_runs(
    make_app: Callable[..., perdure.App],
) -> None:
    app = _agent_app(make_app, [])
    async with running_worker(app):
        misfit = await app.get_task("misfit").trigger(1)
        with pytest.raises(perdure.errors.TaskFailed, match="do not fit task 'misfit'"):
            await misfit.result(timeout=30)
        parent = await app.get_task("parent").trigger()
        with pytest.raises(perdure.errors.TaskFailed, match="child run"):
            await parent.result(timeout=30)  # its child failed, so it did
    assert (await app.store.get_run(misfit.id)).continued_as is None
    await app.close()
