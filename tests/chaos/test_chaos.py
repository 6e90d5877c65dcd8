"""Chaos, bounded for CI. Kills: 3 workers on PostgreSQL, 200 runs x 5 steps, a random worker
killed with SIGKILL every 0.3-1 s for 30 s and restarted. Then each nemesis on each store where
it applies, briefly. Every time: nothing lost or left unfinished, nothing recorded ran again,
nothing completed twice, no taken-over worker went on. `scripts/chaos` runs the same at any
size."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import crashapp
from .harness import (
    NEMESES,
    ChaosReport,
    applies,
    chaos_database,
    most_at_once,
    run_chaos,
    unsupported,
)

pytestmark = pytest.mark.crash


async def test_chaos_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    report = await run_chaos(postgres_url, tmp_path, runs=200, steps=5, workers=3, seconds=30)
    print(json.dumps(report.figures()))  # the figures, for the log of the run
    assert report.kills >= 30
    assert report.problems == []
    assert report.completed == 200
    assert (report.lost, report.double_completions, report.reexecuted_recorded_steps) == (0, 0, 0)
    assert report.interrupted_steps_rerun > 0  # the kills did interrupt work


CASES = [
    (store, nemesis)
    for store in ("sqlite", "postgres")
    for nemesis in NEMESES
    if applies(nemesis, store) and (store, nemesis) != ("postgres", "kill")  # (the test above)
]


@contextlib.contextmanager
def _database(store: str, nemesis: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """chaos_database, or a skip (a failure with CI=true) where this machine cannot run
    `nemesis`."""
    reason = unsupported(nemesis, store)
    if reason is not None:  # scripts/test installs faketime; CI runs as root
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with chaos_database(store, (nemesis,), tmp_path) as where:
        yield where


async def _briefly(
    store: str, nemesis: str, tmp_path: Path, *, limited: bool = False
) -> ChaosReport:
    """40 runs x 4 steps on 3 workers, `nemesis` every 0.5-1.5 s for 8 s; the figures printed
    for the log of the run."""
    with _database(store, nemesis, tmp_path) as where:
        report = await run_chaos(
            str(where["database"]),
            tmp_path,
            runs=40,
            steps=4,
            workers=3,
            seconds=8,
            nemeses=(nemesis,),
            cluster=where.get("cluster"),
            disk=where.get("disk"),
            fault_every=(0.5, 1.5),
            step_delay=0.1,
            limited=limited,
        )
    print(json.dumps(report.figures()))
    return report


@pytest.mark.parametrize(("store", "nemesis"), CASES)
async def test_each_nemesis_briefly(store: str, nemesis: str, tmp_path: Path) -> None:
    report = await _briefly(store, nemesis, tmp_path)
    assert report.faults.get(nemesis, 0) >= 2  # (a pause takes 2-3 s of the 8)
    assert report.problems == []
    assert report.completed == 40


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_queue_limit_holds_under_kills(store: str, tmp_path: Path) -> None:
    """Runs on a queue limited to crashapp.LIMIT, three workers of four slots each, workers
    killed at random: no more runs than the limit ever ran at once."""
    report = await _briefly(store, "kill", tmp_path, limited=True)
    assert report.problems == []
    assert report.completed == 40
    assert report.most_at_once == crashapp.LIMIT  # the limit was reached, and held


def test_the_limit_check_counts_runs_inside_at_once() -> None:
    one, two, three = "r1", "r2", "r3"
    assert most_at_once([(0.0, 1.0, one), (0.5, 1.5, two), (0.9, 2.0, three)]) == 3
    assert most_at_once([(0.0, 1.0, one), (1.0, 2.0, two)]) == 1  # touching is not overlapping
    assert most_at_once([(0.0, 1.0, one), (0.2, 0.4, one), (0.5, 1.5, two)]) == 2  # per run
