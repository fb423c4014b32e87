#!/usr/bin/env bash
# Instructions per request of the contenders of periscope-trace's `server_layer` bench (the
# server layer against tower-http's request-id and trace layers: as they come, set up to
# continue W3C traces with OpenTelemetry's propagator, and set up to do the layer's whole job),
# counted by callgrind: the difference between a run of N2 and a run of N1 calls, divided by
# N2 - N1, so setup and start-up cancel out. Deterministic, unlike times on a shared machine.
#
# Usage: scripts/callgrind-trace.sh   (needs valgrind)
# Environment: SUBSCRIBERS (default "registry fmt_sink periscope_log_sink"), KINDS (default "edge internal"),
#              N1 (default 200), N2 (default 2200), FEATURES (cargo features, e.g. "otel").
set -euo pipefail
cd "$(dirname "$0")/.."

n1=${N1:-200}
n2=${N2:-2200}
bin=$(cargo bench -p periscope-trace --bench server_layer --features "${FEATURES:-}" --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("target", {}).get("name") == "server_layer" and message.get("executable"):
        print(message["executable"])')

# Instructions per call of one contender.
per_call() {
  local counts=()
  for calls in "$n1" "$n2"; do
    counts+=("$(TRACE_BENCH_RUN="$1/$calls" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      "$bin" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')")
  done
  echo $(((counts[1] - counts[0]) / (n2 - n1)))
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

contenders=(tower_http tower_http_w3c tower_http_same_job)
header="| subscriber | request | noop | periscope |"
rule="| --- | --- | --- | --- |"
for name in "${contenders[@]}"; do
  header+=" $name | ratio |"
  rule+=" --- | --- |"
done
echo "$header"
echo "$rule"
for subscriber in ${SUBSCRIBERS:-registry fmt_sink periscope_log_sink}; do
  for kind in ${KINDS:-edge internal}; do
    noop=$(per_call "$subscriber/$kind/noop")
    periscope=$(($(per_call "$subscriber/$kind/periscope") - noop))
    row="| $subscriber | $kind | $noop | $periscope |"
    for name in "${contenders[@]}"; do
      other=$(($(per_call "$subscriber/$kind/$name") - noop))
      row+=" $other | $(ratio $periscope $other) |"
    done
    echo "$row"
  done
done
