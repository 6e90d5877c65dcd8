"""`scripts/chaos`: the chaos harness at any size, with its figures.

scripts/chaos [--runs 2000] [--steps 5] [--minutes 5] [--workers 3] [--store postgres|sqlite|all]
              [--nemesis kill,pause,clock,db-restart,db-crash,disk-full]

The nemeses are mixed at random in one run; by default every one that applies to the store and
that this machine supports. PostgreSQL runs on a private server the script creates (initdb on
a free port), never on the shared one; disk-full puts the SQLite database on a small tmpfs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .harness import NEMESES, ChaosReport, applies, chaos_database, run_chaos, unsupported


def main() -> int:
    parser = argparse.ArgumentParser(description="Inject faults at random; check every run.")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0.5, help="how long to inject faults")
    parser.add_argument("--store", choices=["postgres", "sqlite", "all"], default="postgres")
    parser.add_argument(
        "--nemesis",
        default="",
        help=f"comma-separated subset of {','.join(NEMESES)} (default: all that apply)",
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument(
        "--limited",
        action="store_true",
        help="run on a queue with a concurrency limit, and check that it holds",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    stores = ["sqlite", "postgres"] if args.store == "all" else [args.store]
    asked = [n for n in args.nemesis.split(",") if n] or list(NEMESES)
    for nemesis in asked:
        if nemesis not in NEMESES:
            parser.error(f"unknown nemesis {nemesis!r} (known: {', '.join(NEMESES)})")

    ok = True
    for store in stores:
        nemeses = []
        for nemesis in asked:
            reason = unsupported(nemesis, store)
            if reason is None:
                nemeses.append(nemesis)
            elif applies(nemesis, store) or args.nemesis:
                print(f"{store}: leaving out {nemesis}: {reason}", file=sys.stderr)
        if not nemeses:
            print(f"{store}: no nemesis to run", file=sys.stderr)
            continue
        report = _run(store, tuple(nemeses), args)
        ok = ok and report.ok
        _show(store, report, as_json=args.json)
    return 0 if ok else 1


def _run(store: str, nemeses: tuple[str, ...], args: argparse.Namespace) -> ChaosReport:
    with tempfile.TemporaryDirectory(prefix="perdure-chaos-") as tmp:
        workdir = Path(tmp)
        with chaos_database(store, nemeses, workdir) as where:
            return asyncio.run(
                run_chaos(
                    where["database"],
                    workdir,
                    runs=args.runs,
                    steps=args.steps,
                    workers=args.workers,
                    seconds=args.minutes * 60,
                    nemeses=nemeses,
                    cluster=where.get("cluster"),
                    disk=where.get("disk"),
                    seed=args.seed,
                    limited=args.limited,
                )
            )


def _show(store: str, report: ChaosReport, *, as_json: bool) -> None:
    figures = {"store": store, **report.figures()}
    if as_json:
        print(json.dumps(figures))
        return
    table = Table("figure", "value", title=f"perdure chaos ({store})")
    for key, value in figures.items():
        if key != "problems":
            table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    Console().print(table)
    for problem in report.problems[:20]:
        print(f"problem: {problem}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
