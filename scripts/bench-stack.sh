#!/usr/bin/env bash
# Runs benches/stack.rs several times and prints the overhead table (scripts/bench-table.py):
# on a shared machine the load moves between contenders within one run, so every ratio is
# taken within a run and the table shows the median over the runs and their range.
#
# Usage: scripts/bench-stack.sh [RUNS]   (default 3)
# Environment: FEATURES (cargo features, e.g. "otel" for the OpenTelemetry contenders with
#              periscope's own ids; default none), MEASURE (seconds per contender, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
target=${CARGO_TARGET_DIR:-target}
out=$target/stack-bench-runs
rm -rf "$out"
for run in $(seq "$runs"); do
  echo "run $run of $runs" >&2
  mkdir -p "$out/$run"
  if ! cargo bench --bench stack --features "${FEATURES:-}" -- \
    --warm-up-time 1 --measurement-time "${MEASURE:-3}" >"$out/$run/log" 2>&1; then
    cat "$out/$run/log" >&2
    exit 1
  fi
  cp -r "$target/criterion/edge" "$target/criterion/internal" "$out/$run/"
done
python3 scripts/bench-table.py "$out"/*
