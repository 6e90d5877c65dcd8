"""The HYBRID benchmark's app, for its worker processes (direct or hybrid): W1's task of three
trivial steps and W5's task of one."""

from __future__ import annotations

import perdure

app = perdure.App("bench")  # the store: PERDURE_DATABASE_URL, or PERDURE_SERVER_URL (hybrid)


@app.step(name="noop")
async def noop(i: int) -> int:
    return i


@app.task(name="three")
async def three(i: int) -> int:
    return await noop(i) + await noop(i) + await noop(i)


@app.task(name="single")
async def single(i: int) -> int:
    return await noop(i)
