"""The WAIT benchmark's app, for its worker process: runs that wait for their token "go"."""

from __future__ import annotations

import time

import perdure

app = perdure.App("bench")  # the database and blobs come from PERDURE_DATABASE_URL / _BLOB_URL


@app.task(name="hold")
async def hold() -> float:
    await perdure.wait_for_token("go")
    return time.time()  # its first instruction after the wait
