"""Chaos, bounded for CI: 3 workers on PostgreSQL, 200 runs x 5 steps, a random worker killed
with SIGKILL every 0.3-1 s for 30 s and restarted; nothing lost, nothing recorded ran again,
nothing completed twice. `scripts/chaos` runs the same at any size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import run_chaos

pytestmark = pytest.mark.crash


async def test_chaos_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    report = await run_chaos(postgres_url, tmp_path, runs=200, steps=5, workers=3, seconds=30)
    print(json.dumps(report.figures()))  # the figures, for the log of the run
    assert report.kills >= 30
    assert report.problems == []
    assert report.completed == 200
    assert (report.lost, report.double_completions, report.reexecuted_recorded_steps) == (0, 0, 0)
    assert report.interrupted_steps_rerun > 0  # the kills did interrupt work
