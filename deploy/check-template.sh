#!/usr/bin/env bash
# Runs the template service (examples/inference_gateway), sends it a few requests so every
# family has samples, then checks its /metrics with `deploy/check.sh metrics`: promtool accepts
# the exposition and every series is in deploy/metrics-catalogue.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --workspace --all-features --example inference_gateway
bin="${CARGO_TARGET_DIR:-target}/debug/examples/inference_gateway"
log=$(mktemp)
# Nothing inherited (as the example tests have it): a developer's `LOG_FORMAT=pretty`,
# `LOG_LEVEL=warn` or `HOST=::` would hide or change the `listening` line read below.
env -i PATH="$PATH" PORT=0 "$bin" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

addr=""
for _ in $(seq 150); do
  addr=$(sed -n 's/.*"addr":"\([0-9.:]*\)".*/\1/p' "$log" | head -n 1)
  [ -n "$addr" ] && break
  sleep 0.2
done
if [ -z "$addr" ]; then
  echo "the template service did not start:" >&2
  cat "$log" >&2
  exit 1
fi
base="http://$addr"
for _ in $(seq 150); do
  curl -sf "$base/ready" >/dev/null && break
  sleep 0.2
done
curl -sf "$base/v1/models" >/dev/null
curl -s -o /dev/null "$base/no/such/route"
# A tiny 1x1 PNG: one prediction, so the model families have samples.
printf '\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde\0\0\0\x0cIDATx\x9cc\xf8\xcf\xc0\0\0\x03\x01\x01\0\xc9\xfe\x92\xef\0\0\0\0IEND\xaeB`\x82' |
  curl -sf -X POST -H 'content-type: image/png' --data-binary @- "$base/predict" >/dev/null
deploy/check.sh metrics "$base/metrics"
