"""The SCALE benchmark's app, for its worker processes: the HYBRID app (W1's task of three
trivial steps) and `hold`, a one-step task whose step notes when it starts (in $SCALE_LOG) and
then waits while the file $SCALE_GATE exists (so a takeover can be timed from the step starting
again)."""

from __future__ import annotations

import os
import time

import perdure
from benchmarks.hybridapp import app

__all__ = ["app"]


@app.step(name="held", retry=perdure.Retry(max_attempts=1))
def held(key: str) -> str:
    with open(os.environ["SCALE_LOG"], "a") as log:
        log.write(f"{key} {os.getpid()} {time.time():.6f}\n")
    while os.path.exists(os.environ["SCALE_GATE"]):  # removed by the benchmark
        time.sleep(0.01)
    return key


@app.task(name="hold")
def hold(key: str) -> str:
    return held(key)
