#!/usr/bin/env bash
# Runs periscope-trace's `server_layer` bench several times and prints, for each request kind
# and subscriber, periscope's overhead over the no-op service as a fraction of each tower-http
# contender's: every ratio taken within a run, the median over the runs and their range (the
# load of a shared machine moves between contenders within one run).
#
# Usage: scripts/bench-trace.sh [RUNS]   (default 3)
# Environment: MEASURE (seconds per contender, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
target=${CARGO_TARGET_DIR:-target}
out=$target/trace-bench-runs
groups=(edge_registry internal_registry edge_fmt_sink internal_fmt_sink edge_periscope_log_sink
  internal_periscope_log_sink)
rm -rf "$out"
for run in $(seq "$runs"); do
  echo "run $run of $runs" >&2
  mkdir -p "$out/$run"
  if ! cargo bench -p periscope-trace --bench server_layer -- \
    --warm-up-time 1 --measurement-time "${MEASURE:-3}" >"$out/$run/log" 2>&1; then
    cat "$out/$run/log" >&2
    exit 1
  fi
  for group in "${groups[@]}"; do
    cp -r "$target/criterion/$group" "$out/$run/"
  done
done
python3 - "$out" "${groups[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path

out, groups = Path(sys.argv[1]), sys.argv[2:]
runs = sorted(p for p in out.iterdir() if p.is_dir())
others = ["tower_http", "tower_http_w3c", "tower_http_same_job"]


def median_ns(run, group, contender):
    estimates = run / group / contender / "new" / "estimates.json"
    return json.loads(estimates.read_text())["median"]["point_estimate"]


print("| group | periscope | " + " | ".join(f"`{o}`: overhead, ratio (range)" for o in others) + " |")
print("| --- " * (len(others) + 2) + "|")
for group in groups:
    overhead = {name: [] for name in ["periscope", *others]}
    ratios = {name: [] for name in others}
    for run in runs:
        noop = median_ns(run, group, "noop")
        ours = median_ns(run, group, "periscope") - noop
        overhead["periscope"].append(ours)
        for name in others:
            theirs = median_ns(run, group, name) - noop
            overhead[name].append(theirs)
            ratios[name].append(ours / theirs)
    cells = [f"{statistics.median(overhead['periscope']):.0f} ns"]
    for name in others:
        r = ratios[name]
        cells.append(
            f"{statistics.median(overhead[name]):.0f} ns, **{statistics.median(r):.2f}** "
            f"({min(r):.2f}–{max(r):.2f})"
        )
    print(f"| {group} | " + " | ".join(cells) + " |")
PY
