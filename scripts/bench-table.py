#!/usr/bin/env python3
"""Prints the overhead table of `benches/stack.rs` from criterion results.

Usage: scripts/bench-table.py [RESULTS_DIR...]
Each RESULTS_DIR holds criterion's `edge/` and `internal/` groups (default: the last run, in
$CARGO_TARGET_DIR/criterion, else target/criterion). With several (scripts/bench-stack.sh
keeps one per run), every figure is the median over the runs, each ratio taken within a run.

For each request kind: the median time per request of every contender, its overhead over
`bare`, and that overhead as a fraction of the anchor stack's overhead (with and without
tracing-opentelemetry), with the range over the runs.
"""

import json
import os
import statistics
import sys
from pathlib import Path

KINDS = ["edge", "internal"]
ANCHORS = ["anchor", "anchor_without_otel"]


def median_ns(path: Path) -> float:
    estimates = json.loads((path / "new" / "estimates.json").read_text())
    return estimates["median"]["point_estimate"]


def load(run: Path, kind: str) -> dict:
    group = run / kind
    if not group.is_dir():
        sys.exit(f"no criterion results under {group}: run the bench first")
    return {p.name: median_ns(p) for p in sorted(group.iterdir()) if (p / "new").is_dir()}


def us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs"


def ratio(values: list) -> str:
    middle = f"{statistics.median(values):.2f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    default = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    runs = [Path(arg) for arg in sys.argv[1:]] or [default]
    for kind in KINDS:
        times = [load(run, kind) for run in runs]
        bare = [t["bare"] for t in times]
        print(f"\n{kind}: bare {us(statistics.median(bare))}, {len(runs)} run(s)")
        print("| contender | time | overhead | / anchor | / anchor without otel |")
        print("| --- | --- | --- | --- | --- |")
        for name in times[0]:
            if name == "bare":
                continue
            overheads = [t[name] - t["bare"] for t in times]
            ratios = [
                ratio([(t[name] - t["bare"]) / (t[a] - t["bare"]) for t in times]) for a in ANCHORS
            ]
            time = statistics.median(t[name] for t in times)
            print(
                f"| {name} | {us(time)} | {us(statistics.median(overheads))} | "
                f"{ratios[0]} | {ratios[1]} |"
            )


if __name__ == "__main__":
    main()
