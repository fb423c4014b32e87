#!/usr/bin/env bash
# Instructions per request of the contenders of benches/stack.rs, counted by callgrind over all
# threads (background log writer and span batch thread included): the difference between a
# run of N2 and a run of N1 calls, divided by N2 - N1, so setup and start-up cancel out.
# Deterministic, unlike times on a shared machine.
#
# Usage: scripts/callgrind-stack.sh [CONTENDER...]   (default: all; needs valgrind)
# Environment: KINDS (default "edge internal"), N1 (default 200), N2 (default 2200),
#              FEATURES (cargo features of the bench build, e.g. "otel"; default none).
set -euo pipefail
cd "$(dirname "$0")/.."

kinds=${KINDS:-edge internal}
n1=${N1:-200}
n2=${N2:-2200}
features=${FEATURES:-}
contenders=("$@")
if ((${#contenders[@]} == 0)); then
  contenders=(bare correlation metrics access_log errors full full_nonblocking
    full_otel_sampled full_otel_sampled_out anchor anchor_without_otel)
fi

bin=$(cargo bench --bench stack --features "$features" --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("target", {}).get("name") == "stack" and message.get("executable"):
        print(message["executable"])')

# Instructions of one run of `calls` calls.
instructions() {
  STACK_BENCH_RUN="$1/$2/$3" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

for kind in $kinds; do
  declare -A per_request=()
  echo
  echo "$kind: instructions per request (callgrind, all threads, ($n2 - $n1 calls))"
  echo "| contender | instructions | overhead over bare |"
  echo "| --- | --- | --- |"
  for name in bare "${contenders[@]}"; do
    [[ -n ${per_request[$name]:-} ]] && continue
    a=$(instructions "$kind" "$name" "$n1")
    b=$(instructions "$kind" "$name" "$n2")
    per_request[$name]=$(((b - a) / (n2 - n1)))
    [[ $name == bare ]] && continue
    echo "| $name | ${per_request[$name]} | $((per_request[$name] - per_request[bare])) |"
  done
  echo "bare: ${per_request[bare]}"
  unset per_request
done
