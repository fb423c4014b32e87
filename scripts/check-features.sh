#!/usr/bin/env bash
# Lints each crate's libraries under the feature sets users pick (defaults off, each feature on
# its own), which `--all-features` in the other CI steps never builds. Fails on the first set
# that does not build or lints with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."

sets=(
  "-p periscope"
  "-p periscope --no-default-features"
  "-p periscope-context --no-default-features"
  "-p periscope-gpu --no-default-features"
  "-p periscope-admin --no-default-features"
)
for feature in axum metrics gpu signal serve http2 grpc otel gpu-tracker; do
  sets+=("-p periscope --no-default-features --features $feature")
done
for feature in health metrics log gpu axum; do
  sets+=("-p periscope-admin --no-default-features --features $feature")
done
sets+=("-p periscope-gpu --no-default-features --features tracker")
for crate in trace health log error metrics; do
  sets+=("-p periscope-$crate --no-default-features")
done
for feature in signal metrics axum grpc; do sets+=("-p periscope-health --features $feature"); done
for feature in otel axum; do sets+=("-p periscope-trace --features $feature"); done
for crate in error log metrics; do sets+=("-p periscope-$crate --features axum"); done
sets+=("-p periscope-log --features otel")

for set in "${sets[@]}"; do
  echo "--- cargo clippy $set --lib"
  # shellcheck disable=SC2086 # each set is several arguments
  cargo clippy $set --lib --quiet -- -D warnings
done
echo "check-features: ${#sets[@]} feature sets build without warnings"
