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


class _Figures:
    """One store's figures of a run (perdure's and the peer's), by workload and metric."""

    def __init__(self, results: list[Metric], store: str) -> None:
        self.ours = {
            (m["workload"], m["metric"]): float(m["value"])
            for m in results
            if m["store"] == store and not m.get("peer")
        }
        self.theirs = {
            (m["workload"], m["metric"]): float(m["value"])
            for m in results
            if m["store"] == store and m.get("peer")
        }

    def get(self, workload: str, metric: str) -> float | None:
        return self.ours.get((workload, metric))

    def times_peer(self, workload: str, metric: str) -> float | None:
        ours, theirs = self.ours.get((workload, metric)), self.theirs.get((workload, metric))
        if ours is None or theirs is None:
            return None
        return ratio(metric, ours, theirs)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("**met**" if ok else "**missed**")


def _x(value: float | None) -> str:
    return "" if value is None else f"{_fmt(value)} x"


def _target_cell(name: str, f: _Figures, store: str) -> str:
    """One target on one store: the figures it is judged on, and met or missed."""
    sqlite = store == "sqlite"
    floor = f.get("floor", "commit_ms")
    if name == "W1":
        runs, peer = f.get("W1", "runs_per_s"), f.times_peer("W1", "runs_per_s")
        if runs is None:
            return ""
        ok = runs >= (1000 if sqlite else 700) and (peer is None or peer >= 15)
        return f"{_fmt(runs)} runs/s, {_x(peer) or 'no peer'} DBOS: {_verdict(ok)}"
    if name == "W2":
        step, journal = f.get("W2", "ms_per_step"), f.get("floor", "journal_commit_ms")
        if step is None or not floor:
            return ""
        beside = f" ({_x(step / journal)} the journal-row commit)" if journal else ""
        return f"{_x(step / floor)} the floor{beside}: {_verdict(step / floor <= 1.25)}"
    if name == "W3":
        again, seconds = (
            f.get("W3", "completed_steps_reexecuted"),
            f.get("W3", "restart_to_completion_s"),
        )
        if again is None or seconds is None:
            return ""
        ok = again == 0 and seconds <= 0.3
        return f"{again:.0f} re-executed, {_fmt(seconds)} s: {_verdict(ok)}"
    if name == "W4":
        step, w4_floor = f.get("W4", "ms_per_step"), f.get("W4", "floor_ms")
        if step is None or not w4_floor:
            return ""
        return f"{_x(step / w4_floor)} its floor: {_verdict(step / w4_floor <= 1.2)}"
    if name == "W5":
        p50, p95 = f.get("W5", "p50_ms"), f.get("W5", "p95_ms")
        if p50 is None or p95 is None or not floor:
            return ""
        return (
            f"p50 {_x(p50 / floor)}: {_verdict(p50 / floor <= 4)}; "
            f"p95 {_x(p95 / floor)}: {_verdict(p95 / floor <= 8)}"
        )
    if name == "SLEEP10K":
        rss, lag = f.get("SLEEP10K", "rss_mb"), f.get("SLEEP10K", "wake_lag_p95_s")
        if rss is None or lag is None:
            return ""
        peer = f.times_peer("SLEEP10K", "wake_lag_p95_s")
        return (
            f"{_fmt(rss)} MB: {_verdict(rss <= 100)}; lag p95 {_fmt(lag)} s "
            f"({_x(peer) or 'no peer'} DBOS): {_verdict(lag <= 0.7)}"
        )
    seconds, peer = f.get("FANOUT", "seconds"), f.times_peer("FANOUT", "seconds")
    if seconds is None:
        return ""
    if not sqlite:
        return f"{_fmt(seconds)} s, {_x(peer) or 'no peer'} DBOS (no target)"
    ok = seconds <= 0.75 and (peer is None or peer >= 10)
    return f"{_fmt(seconds)} s, {_x(peer) or 'no peer'} DBOS: {_verdict(ok)}"


TARGETS = {
    "W1": "W1 ≥ 1,000 runs/s SQLite, ≥ 700 PostgreSQL, ≥ 15 x DBOS",
    "W2": "W2 ≤ 1.25 x commit floor",
    "W3": "W3 restart → done ≤ 0.3 s, 0 re-executed",
    "W4": "W4 ≤ 1.2 x its floor",
    "W5": "W5 p50 ≤ 4 x, p95 ≤ 8 x commit floor",
    "SLEEP10K": "SLEEP10K RSS ≤ 100 MB, wake lag p95 ≤ 0.7 s (≥ 10 x DBOS)",
    "FANOUT": "FANOUT ≤ 0.75 s SQLite, ≥ 10 x DBOS",
}
"""The targets of the benchmark issue, judged from each run's own figures and floors."""


def targets(results: list[Metric]) -> list[str]:
    """The targets table (markdown lines) of a run."""
    sqlite, postgres = _Figures(results, "sqlite"), _Figures(results, "postgres")
    lines = ["| target | SQLite | PostgreSQL |", "|---|---|---|"]
    for name, text in TARGETS.items():
        lines.append(
            f"| {text} | {_target_cell(name, sqlite, 'sqlite')} "
            f"| {_target_cell(name, postgres, 'postgres')} |"
        )
    return lines


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
    lines += ["", "![ratios](benchmarks.png)" if peer else "", ""]
    lines += ["Targets, judged from this run's figures and floors:", "", *targets(results)]
    lines += ["", END]
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
