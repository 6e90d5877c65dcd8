"""What the three agent examples share: the calls log, the crash point, and the demo that runs
an example's agent in a worker process, kills the worker between two model calls, resumes the
run in a second worker and approves the refund the agent asks for.

Each model call and each tool body appends "WHAT PID" to the file $PERDURE_EXAMPLE_CALLS (when
set); the lookup tool waits while the file $PERDURE_EXAMPLE_CRASH_POINT exists, so the demo
(and the tests) can kill the worker at that point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import perdure
from perdure.adapters._core import APPROVALS

ROOT = Path(__file__).resolve().parent.parent.parent


def log(line: str) -> None:
    """Note a call in the calls log, with this process's id."""
    path = os.environ.get("PERDURE_EXAMPLE_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(f"{line} {os.getpid()}\n")


async def crash_point() -> None:
    """Wait while the crash point file exists (the demo kills the worker here)."""
    path = os.environ.get("PERDURE_EXAMPLE_CRASH_POINT", "")
    while path and os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - the demo's marker file
        await asyncio.sleep(0.01)


def tool_outputs(items: Any) -> list[str]:
    """The outputs of the tool calls in a model's input (the Responses format)."""
    if isinstance(items, str):
        return []
    return [
        str(item["output"])
        for item in items
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


def calls(path: Path) -> list[tuple[str, int]]:
    """The calls made so far, in order, with the process that made each."""
    if not path.exists():
        return []
    return [
        (what, int(pid)) for what, pid in (line.split() for line in path.read_text().splitlines())
    ]


async def _until(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await check() if asyncio.iscoroutinefunction(check) else check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


def demo(module: str, app_name: str, task: str) -> int:
    """Run the demo for the example `module` (examples.agents.NAME), its app and its task;
    exit status 1 if a recorded model call was made again."""
    return asyncio.run(_demo(module, app_name, task))


async def _unused(question: str) -> str:
    raise NotImplementedError("the worker runs the task; this process only triggers it")


async def _demo(module: str, app_name: str, task: str) -> int:
    home = Path(tempfile.mkdtemp(prefix="perdure-agent-"))
    calls_log, crash = home / "calls.log", home / "crash-point"
    crash.touch()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": f"sqlite:///{home}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{home}/blobs",
        "PERDURE_EXAMPLE_CALLS": str(calls_log),
        "PERDURE_EXAMPLE_CRASH_POINT": str(crash),
    }
    os.environ.update(env)

    def worker(n: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "perdure", "worker", f"{module}:app"]
        err = (home / f"worker-{n}.log").open("ab")
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)

    app = perdure.App(app_name)  # on the demo's store (its environment is set now)
    app.task(name=task)(_unused)
    first = worker(1)
    handle = await app.get_task(task).trigger("Where is order 7? I want a refund.")
    print(f"run {handle.id} started in worker 1 (pid {first.pid})")
    await _until("the lookup tool", lambda: ("tool-lookup-7", first.pid) in calls(calls_log))
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    crash.unlink()
    print("worker 1 killed with SIGKILL in the lookup tool, after the first model call")
    second = worker(2)
    print(f"worker 2 (pid {second.pid}) takes the run over")

    async def waiting() -> bool:
        return await handle.status() is perdure.RunStatus.WAITING

    await _until("the approval", waiting)
    (asked,) = (await handle.metadata())[APPROVALS]
    print(f"the agent waits for a person: {asked}")
    await handle.complete_token(asked["token"], {"approved": True})
    print(f"approved (token {asked['token']})")
    answer = await handle.result(timeout=60)
    print(f"answer: {answer}")
    second.send_signal(signal.SIGTERM)
    second.wait(30)
    await app.close()

    made = calls(calls_log)
    names = {first.pid: "worker 1", second.pid: "worker 2"}
    for what, pid in made:
        print(f"  {what:<16} {names.get(pid, pid)}")
    again = [what for what, _pid in made if what.startswith("model")]
    if len(again) != len(set(again)):
        print("a recorded model call was made again")
        return 1
    print("no model call was made twice; the lookup, interrupted by the kill, ran again")
    return 0
