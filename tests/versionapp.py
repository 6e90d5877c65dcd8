"""An app for version tests with real processes; its code changes with the environment, as a
deploy changes it. Every step appends "KEY:WHAT" to $VERSIONS_LOG.

- $VERSIONS_PATCH=1: `deploy` has a patched extra step (perdure.patched("extra-step")).
- $VERSIONS_RENAME=1: the step `record` is registered as `record-renamed` (a change that does
  not replay).
- `five` takes five steps; step N fails (not retried) while the file $VERSIONS_LOG.failN
  exists.
"""

from __future__ import annotations

import os

import perdure

app = perdure.App("versioned")

PATCHED = os.environ.get("VERSIONS_PATCH") == "1"
NAP = float(os.environ.get("VERSIONS_NAP", "1.5"))


def _log(line: str) -> None:
    with open(os.environ["VERSIONS_LOG"], "a") as f:
        f.write(line + "\n")


@app.step(name="record-renamed" if os.environ.get("VERSIONS_RENAME") == "1" else "record")
async def record(line: str) -> str:
    _log(line)
    return line


@app.step(name="numbered", retry=perdure.Retry(max_attempts=1))
async def numbered(key: str, n: int) -> int:
    _log(f"{key}:{n}")
    if os.path.exists(f"{os.environ['VERSIONS_LOG']}.fail{n}"):  # noqa: ASYNC240 - a test marker
        raise RuntimeError(f"step {n} is broken")
    return n


@app.task(name="deploy")
async def deploy(key: str) -> str:
    await record(f"{key}:1")
    if PATCHED and perdure.patched("extra-step"):
        await record(f"{key}:extra")
    await record(f"{key}:2")
    await perdure.sleep(NAP)
    await record(f"{key}:3")
    return "done"


@app.task(name="five", retry=perdure.Retry(max_attempts=1))
async def five(key: str) -> int:
    return sum([await numbered(key, n) for n in range(1, 6)])
