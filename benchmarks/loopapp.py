"""The LOOP benchmark's app, for its worker processes: an agent of `turns` turns (a step each,
standing in for a model call), continuing as a new run every `every` turns (0: never), that
waits for the event "bench.resume" at the end — the benchmark measures that resume."""

from __future__ import annotations

from typing import Any

import perdure

app = perdure.App("bench")  # the database and blobs come from PERDURE_DATABASE_URL / _BLOB_URL


@app.step(name="turn")
async def turn(n: int) -> dict[str, Any]:
    return {"turn": n, "reply": "a model's answer of a few hundred bytes " * 8}


@app.task(name="agent")
async def agent(key: str, done: int, turns: int, every: int) -> int:
    while done < turns:
        await turn(done)
        done += 1
        if every and done % every == 0 and done < turns:
            perdure.continue_as_new(key, done, turns, every)
    await perdure.wait_for_event("bench.resume", match={"key": key})
    return done
