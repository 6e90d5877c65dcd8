"""`scripts/chaos`: the chaos harness at any size, with its figures.

scripts/chaos [--runs 2000] [--minutes 5] [--workers 3] [--store postgres|sqlite]
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

from .harness import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description="Kill workers at random; check every run.")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0.5, help="how long to keep killing")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="perdure-chaos-") as tmp:
        workdir = Path(tmp)
        if args.store == "postgres":
            from .. import pg

            pg.require_postgres_or_exit()
            name = pg.create_fresh_database()
            database = pg.url_for(name)
        else:
            database = f"sqlite:///{workdir}/perdure.db"
        try:
            report = asyncio.run(
                run_chaos(
                    database,
                    workdir,
                    runs=args.runs,
                    steps=args.steps,
                    workers=args.workers,
                    seconds=args.minutes * 60,
                )
            )
        finally:
            if args.store == "postgres":
                pg.drop_database(name)
    figures = report.figures()
    if args.json:
        print(json.dumps(figures))
    else:
        table = Table("figure", "value", title=f"perdure chaos ({args.store})")
        for key, value in figures.items():
            if key != "problems":
                table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
        Console().print(table)
        for problem in report.problems[:20]:
            print(f"problem: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
