#!/usr/bin/env python3
"""Prints the overhead table of `benches/stack.rs` from criterion's last run.

Usage: scripts/bench-table.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion)

For each request kind: the median time per request of every contender, its overhead over
`bare`, and that overhead as a fraction of the anchor stack's overhead (with and without
tracing-opentelemetry).
"""

import json
import os
import sys
from pathlib import Path

KINDS = ["edge", "internal"]
ANCHORS = ["anchor", "anchor_without_otel"]


def median_ns(path: Path) -> float:
    estimates = json.loads((path / "new" / "estimates.json").read_text())
    return estimates["median"]["point_estimate"]


def us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs"


def main() -> None:
    default = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    for kind in KINDS:
        group = root / kind
        if not group.is_dir():
            sys.exit(f"no criterion results under {group}: run the bench first")
        times = {p.name: median_ns(p) for p in sorted(group.iterdir()) if (p / "new").is_dir()}
        bare = times["bare"]
        anchor = {name: times[name] - bare for name in ANCHORS}
        print(f"\n{kind}: bare {us(bare)}")
        print("| contender | time | overhead | / anchor | / anchor without otel |")
        print("| --- | --- | --- | --- | --- |")
        for name, time in times.items():
            if name == "bare":
                continue
            overhead = time - bare
            ratios = " | ".join(f"{overhead / anchor[a]:.2f}" for a in ANCHORS)
            print(f"| {name} | {us(time)} | {us(overhead)} | {ratios} |")


if __name__ == "__main__":
    main()
