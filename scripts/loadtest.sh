#!/usr/bin/env bash
# The load test: the inference gateway's cheap route (GET /v1/models) served with periscope's
# full stack, and the same router bare (PERISCOPE_BARE=true), driven over 127.0.0.1 by
# examples/loadgen.rs. The variants run alternately, ROUNDS times each; prints every run, then
# the medians and the ratio full / bare.
#
# Usage: scripts/loadtest.sh
# Environment (defaults): ROUNDS (3), REQUESTS (300000), DURATION (10 s), WARMUP (2 s),
#   CONNECTIONS (32), PORT (18080), SERVER_CPUS (0), CLIENT_CPUS (1): the server and the load
#   generator are pinned to separate cores with taskset (Linux's util-linux; without it, or
#   with PIN=0, nothing is pinned).
# The gateway's log lines go to /dev/null (they are still formatted and written).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
requests=${REQUESTS:-300000}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
connections=${CONNECTIONS:-32}
port=${PORT:-18080}
server_pin=() client_pin=()
if [[ ${PIN:-1} != 0 ]] && ! command -v taskset >/dev/null; then
  echo "taskset not found: the server and the load generator are not pinned" >&2
  PIN=0
fi
if [[ ${PIN:-1} != 0 ]]; then
  server_pin=(taskset -c "${SERVER_CPUS:-0}")
  client_pin=(taskset -c "${CLIENT_CPUS:-1}")
fi

cargo build --release --example inference_gateway --example loadgen
bin=${CARGO_TARGET_DIR:-target}/release/examples

# One run of one variant: starts the gateway, loads it, stops it; prints `VARIANT loadgen-line`.
run() {
  local variant=$1 bare=$2
  PORT=$port PERISCOPE_BARE=$bare SHUTDOWN_DRAIN_S=0 \
    ${server_pin[@]+"${server_pin[@]}"} "$bin/inference_gateway" >/dev/null &
  local server=$!
  local line
  if ! line=$(${client_pin[@]+"${client_pin[@]}"} "$bin/loadgen" "http://127.0.0.1:$port/v1/models" \
    --connections "$connections" --requests "$requests" --duration "$duration" \
    --warmup "$warmup"); then
    kill "$server"
    return 1
  fi
  kill -TERM "$server"
  wait "$server" || true
  echo "$variant $line"
}

echo "GET /v1/models, $connections connections, at most $requests requests or ${duration} s" \
  "per run after ${warmup} s of warm-up; server: ${server_pin[*]:-unpinned}," \
  "load generator: ${client_pin[*]:-unpinned}"
for round in $(seq "$rounds"); do
  if ((round % 2)); then order=("full false" "bare true"); else order=("bare true" "full false"); fi
  for variant in "${order[@]}"; do
    # shellcheck disable=SC2086 # two words: the variant's name and PERISCOPE_BARE
    run $variant
  done
done | tee /dev/stderr | python3 -c '
import statistics, sys
runs = {"full": [], "bare": []}
for line in sys.stdin:
    name, *fields = line.split()
    runs[name].append({k: float(v) for k, v in (f.split("=") for f in fields)})
print()
print("| variant | requests/s | p50 | p99 | errors |")
print("| --- | --- | --- | --- | --- |")
for name in ("bare", "full"):
    rps, p50, p99 = (statistics.median(r[key] for r in runs[name]) for key in ("rps", "p50_us", "p99_us"))
    errors = sum(r["errors"] for r in runs[name])
    print(f"| {name} | {rps:.0f} | {p50:.0f} µs | {p99:.0f} µs | {errors:.0f} |")
ratios = [f["rps"] / b["rps"] for f, b in zip(runs["full"], runs["bare"])]
each = ", ".join(f"{r:.2f}" for r in ratios)
print(f"\nfull / bare throughput: {statistics.median(ratios):.2f} (runs: {each}); goal: at least 0.85")
failed = sum(r["errors"] for name in runs for r in runs[name])
if failed:
    sys.exit(f"{failed:.0f} answers were not 2xx: the figures above count 2xx only, and the run is not a valid comparison")
'
