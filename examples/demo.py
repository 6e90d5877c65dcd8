"""The perdure demo: run the research agent in a worker subprocess, SIGKILL the worker in the
middle of a step, start a new one, and show from the timeline that the run resumed after its
last recorded step. Exits non-zero if any recorded step ran twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "perdure", "worker", "examples.research_agent:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


async def wait_for(path: Path, event: str, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["event"] == event and e.get("name") == name for e in events(path)):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: no '{event} {name}' within {timeout}s")
        await asyncio.sleep(0.02)


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="perdure-demo-"))
    timeline_path = work / "timeline.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PERDURE_DATABASE_URL": f"sqlite:///{work}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{work}/blobs",
        "PERDURE_DEMO_TIMELINE": str(timeline_path),
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    from examples.research_agent import app, research

    console.rule("[bold]perdure demo: a research agent that survives kill -9")
    console.print(f"database and blobs in {work}")
    first = start_worker(env, work / "worker-1.log")
    t0 = time.time()
    handle = await research.trigger("durable execution")
    console.print(f"triggered run [bold]{handle.id}[/bold]; worker 1 is pid {first.pid}")

    await wait_for(timeline_path, "step", "summarise")
    await asyncio.sleep(0.5)  # well inside the 2-second summarise step
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    console.print(f"[red]SIGKILL worker 1 (pid {first.pid}) in the middle of 'summarise'[/red]")

    second = start_worker(env, work / "worker-2.log")
    console.print(f"started worker 2 (pid {second.pid})")
    result = await handle.result(timeout=60)
    done_at = time.time()
    second.send_signal(signal.SIGTERM)
    second.wait(30)

    table = Table("t (s)", "worker", "event", title="timeline")
    labels = {first.pid: "worker 1", second.pid: "worker 2"}
    rows: list[tuple[float, str, str]] = [
        (killed_at, "worker 1", "[red]killed with SIGKILL[/red]"),
        (done_at, "worker 2", "[green]run completed[/green]"),
    ]
    for e in events(timeline_path):
        what = {"step": "ran step", "error": "failed", "sleep": "durable sleep"}[e["event"]]
        detail = e.get("name", "")
        if e["event"] == "error":
            detail += f" ({e['error']}), retrying"
        if e["event"] == "sleep":
            detail += f" {e['seconds']}s (slot freed)"
        rows.append((e["t"], labels.get(e["pid"], str(e["pid"])), f"{what} {detail}"))
    for t, who, what in sorted(rows):
        table.add_row(f"{t - t0:6.2f}", who, what)
    console.print(table)

    ran: dict[str, list[int]] = {}
    for e in events(timeline_path):
        if e["event"] == "step":
            ran.setdefault(e["name"], []).append(e["pid"])
    repeated = [name for name, pids in ran.items() if len(pids) > 1 and name != "search"]
    before_kill = [n for n, pids in ran.items() if pids[0] == first.pid and n != "summarise"]
    console.print(f"result: {result['report']!r}")
    console.print(
        f"steps recorded before the kill and not run again: {', '.join(before_kill)}; "
        f"'summarise' was interrupted and ran again in worker 2; "
        f"the run finished {done_at - killed_at:.1f}s after the kill"
    )
    await app.close()
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "perdure", "runs", "show", handle.id],
        cwd=ROOT,
        env=env,
        check=True,
    )
    if repeated != ["summarise"]:
        console.print(f"[red]unexpected re-runs: {repeated}[/red]")
        return 1
    console.print("[bold green]the run resumed after its last recorded step[/bold green]")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
