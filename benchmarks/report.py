"""The benchmark report: perdure beside the reference peer, as a table (docs/benchmarks.md,
between its result markers) and a bar chart of the ratios (docs/benchmarks.png)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"

Metric = dict[str, Any]

HIGHER_IS_BETTER = {"runs_per_s"}
"""Metrics where more is better; for every other one (times, sizes, counts) less is."""


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _fmt_ratio(better: float | str | None) -> str:
    if not isinstance(better, float):
        return ""
    return f"{better:.2f}x" if better < 10 else f"{better:.1f}x"


def ratio(metric: str, ours: float, peer: float) -> float | None:
    """How many times better perdure is (above 1: perdure is better)."""
    if metric in HIGHER_IS_BETTER:
        return ours / peer if peer else None
    if ours <= 0:
        return None  # e.g. zero re-executed steps on both sides: no ratio
    return peer / ours


def _key(m: Metric) -> tuple[str, str, str]:
    return (str(m["store"]), str(m["workload"]), str(m["metric"]))


def compare(results: list[Metric]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows (store, workload, metric, perdure, peer, x better), in the order measured."""
    peers = {_key(m): m for m in results if m.get("peer")}
    rows = []
    for m in results:
        if m.get("peer"):
            continue
        theirs = peers.get(_key(m))
        better = "" if theirs is None else ratio(m["metric"], m["value"], theirs["value"])
        rows.append(
            (
                str(m["store"]),
                str(m["workload"]),
                str(m["metric"]),
                _fmt(float(m["value"])),
                "" if theirs is None else _fmt(float(theirs["value"])),
                _fmt_ratio(better),
            )
        )
    return rows


def write_report(results: list[Metric], facts: Metric, *, quick: bool) -> None:
    """Rewrite the results part of docs/benchmarks.md, and the chart."""
    peer = next((str(m["peer"]) for m in results if m.get("peer")), None)
    lines = [
        BEGIN,
        "",
        f"Measured {dt.date.today().isoformat()} by `scripts/bench"
        f"{' --quick' if quick else ''}{f' --peer {peer}' if peer else ''} --store all"
        " --report` on one machine, in one run: "
        f"{facts.get('cpus')} CPUs, {facts.get('platform')}, Python {facts.get('python')}.",
        "",
        f"| store | workload | metric | perdure | {peer or 'peer'} | x better |",
        "|---|---|---|---|---|---|",
    ]
    for row in compare(results):
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "![ratios](benchmarks.png)" if peer else "", "", END]
    text = DOC.read_text()
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest report\n\n" + block + "\n"
    DOC.write_text(text)
    if peer:
        chart(results, peer)


def chart(results: list[Metric], peer: str) -> None:
    """A bar chart of how many times better perdure is, per workload and store (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in compare(results) if r[5]]
    labels = [f"{store}\n{workload} {metric}" for store, workload, metric, *_ in rows]
    values = [float(r[5].rstrip("x")) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4.5))
    colors = ["#2a9d8f" if v >= 1 else "#e76f51" for v in values]
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"times better than {peer} (log)")
    ax.set_title(f"perdure vs {peer}, same machine, same run")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}x", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)
    plt.close(fig)


def main() -> int:
    """`python -m benchmarks.report RESULTS.jsonl [--quick]`: the report from saved results."""
    import json
    import sys

    path = Path(sys.argv[1])
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    facts = {k: results[0].get(k) for k in ("cpus", "platform", "python")} if results else {}
    write_report(results, facts, quick="--quick" in sys.argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
