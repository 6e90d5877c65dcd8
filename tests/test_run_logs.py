"""Run logs, on both stores: records logged inside a run by any logger are kept with it in order
with their step, once however often the run's body runs again, a retried step's lines with its
attempt, secret values redacted, tracebacks kept; read back by the admin API and the CLI, and
followed live; gone with the run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import perdure
from perdure.errors import PerdureError
from perdure.retention import purge

from .conftest import ROOT, running_worker

log = logging.getLogger("tests.agent")


@pytest.fixture(autouse=True)
def info_logging() -> Iterator[None]:
    """Let INFO records be made (the logger's level decides what exists to be kept)."""
    before = log.level
    log.setLevel(logging.INFO)
    yield
    log.setLevel(before)


async def test_lines_are_kept_once_in_order_with_their_step(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_API_TOKEN", "tok-7a1c9e0b55d2")
    app = make_app()
    calls = {"flaky": 0}

    @app.step(retry=perdure.Retry(max_attempts=3, min_timeout=0.01, max_timeout=0.02))
    async def flaky(n: int) -> int:
        calls["flaky"] += 1
        log.info("trying %d", n)
        if calls["flaky"] < 2:
            raise ConnectionError("rate limited")
        return n * 2

    @app.task
    async def agent(n: int) -> int:
        token = perdure.secret("AGENT_API_TOKEN")
        log.info("starting with %s", token.reveal())  # a secret's value: redacted
        doubled = await flaky(n)
        await perdure.sleep(0.1)  # the body runs again after this: its lines are not kept twice
        try:
            raise ValueError("bad input")
        except ValueError:
            log.exception("handled")
        log.warning("done: %d", doubled)
        return doubled

    async with running_worker(app):
        handle = await agent.trigger(21)
        assert await handle.result(timeout=30) == 42
    lines = await app.admin.run_logs(handle.id)
    mine = [line for _pos, line in lines if line["logger"] == "tests.agent"]
    assert [(line["level"], line["message"]) for line in mine] == [
        ("INFO", "starting with <secret AGENT_API_TOKEN>"),
        ("INFO", "trying 21"),
        ("INFO", "trying 21"),
        ("ERROR", "handled"),
        ("WARNING", "done: 42"),
    ]
    assert [(line.get("seq"), line.get("attempt")) for line in mine[1:3]] == [(1, 1), (1, 2)]
    assert "step" not in mine[0]
    assert "ValueError: bad input" in mine[3]["traceback"]
    positions = [pos for pos, _line in lines]
    assert positions == sorted(positions)
    assert "tok-7a1c9e0b55d2" not in json.dumps([line for _pos, line in lines])
    retried = [line for _pos, line in lines if line["logger"] == "perdure.run"]
    assert any("rate limited" in line["message"] for line in retried)  # perdure's own, too

    assert await app.admin.run_logs(handle.id, after=positions[2]) == lines[3:]
    report = await purge(app.store, app.store.blobs, older_than=0)
    assert report.runs == 1
    with pytest.raises(perdure.errors.RunNotFound):
        await app.admin.run_logs(handle.id)
    await app.close()


async def test_lines_are_followed_as_they_come(make_app: Callable[..., perdure.App]) -> None:
    app = make_app()
    go = asyncio.Event()

    @app.step
    async def wait_for_go() -> None:
        await go.wait()

    @app.task
    async def talk() -> None:
        log.info("one")
        await wait_for_go()
        log.info("two")

    async with running_worker(app):
        handle = await talk.trigger()
        seen: list[str] = []

        async def follow() -> None:
            async for _position, line in app.admin.follow_logs(handle.id):
                seen.append(line["message"])

        following = asyncio.create_task(follow())
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen == ["one"]  # while the run still waits
        go.set()
        await asyncio.wait_for(following, timeout=30)  # it ends with the run
        assert seen == ["one", "two"]
    await app.close()


async def test_the_stream_names_of_perdure_are_its_own(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def sneaky() -> None:
        await perdure.stream("perdure.logs", {"message": "forged"})

    async with running_worker(app):
        handle = await sneaky.trigger()
        with pytest.raises(PerdureError, match="perdure's"):
            await handle.result(timeout=30)
    await app.close()


def test_the_cli_prints_a_runs_lines(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "PYTHONPATH": str(ROOT),
    }
    script = (
        "import asyncio, logging, perdure\n"
        "from tests.conftest import running_worker\n"
        "logging.getLogger('tests.cli').setLevel(logging.INFO)\n"
        "app = perdure.App('cli')\n"
        "@app.task\n"
        "async def job() -> None:\n"
        "    logging.getLogger('tests.cli').info('hello from %s', 'the run')\n"
        "async def main() -> None:\n"
        "    async with running_worker(app):\n"
        "        h = await job.trigger()\n"
        "        await h.result(timeout=30)\n"
        "        print(h.id)\n"
        "asyncio.run(main())\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    run_id = made.stdout.strip().splitlines()[-1]
    shown = subprocess.run(
        [sys.executable, "-m", "perdure", "runs", "logs", run_id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "INFO" in shown.stdout
    assert "tests.cli: hello from the run" in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "perdure", "runs", "logs", run_id, "--json", "--follow"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (line,) = [json.loads(text) for text in as_json.stdout.splitlines()]
    assert line["message"] == "hello from the run"
    assert line["position"] >= 1


async def test_a_runs_chunks_are_found_past_its_log_lines(
    make_app: Callable[..., perdure.App],
) -> None:
    app = make_app()

    @app.task
    async def chatty() -> None:
        for i in range(1200):
            log.info("line %d", i)
        await perdure.stream("answer", "42")

    async with running_worker(app):
        handle = await chatty.trigger()
        await handle.result(timeout=60)
    chunks = await app.admin.stream_chunks(handle.id, limit=5)
    assert [(name, perdure.progress.decoded(value, "chunk")) for _p, name, value in chunks] == [
        ("answer", "42")
    ]
    assert len(await app.admin.run_logs(handle.id, limit=5000)) >= 1200
    await app.close()


async def test_log_lines_and_stream_chunks_written_at_once_are_all_kept(
    make_app: Callable[..., perdure.App],
) -> None:
    """Lines are written behind the run while its chunks are appended: both take the run's next
    positions, one append at a time (on PostgreSQL, two at once took the same position and the
    lines' batch was lost)."""
    app = make_app()

    @app.task
    async def interleaved() -> None:
        for i in range(60):
            for j in range(10):
                log.info("line %d.%d", i, j)
            await perdure.stream("answer", i)

    async with running_worker(app):
        handle = await interleaved.trigger()
        await handle.result(timeout=60)
    chunks = await app.admin.stream_chunks(handle.id, limit=100)
    assert [perdure.progress.decoded(value, "chunk") for _p, _n, value in chunks] == list(range(60))
    lines = await app.admin.run_logs(handle.id, limit=5000)
    assert [line["message"] for _p, line in lines] == [
        f"line {i}.{j}" for i in range(60) for j in range(10)
    ]
    await app.close()
