#!/usr/bin/env bash
# Times the server layer of the working tree against another commit's, the two builds of
# periscope-trace's `server_layer` bench run in turn, so both see the same load: on a shared
# machine, this is what tells a change of a few percent apart (instruction counts miss what
# atomic operations, cache misses and system calls cost).
#
# Each run is the bench's interleaved mode (`TRACE_BENCH_INTERLEAVED`: every contender in turn,
# a millisecond's batch each), whose ratio of periscope's overhead to `tower_http_same_job`'s
# is stable to about 0.02; the base is built with the working tree's bench file, so both
# builds measure the same way. At the end, each build's median ratio and range per request kind.
#
# Usage: scripts/ab-trace.sh BASE [ROUNDS]   (BASE: a commit; ROUNDS default 4)
# Environment: SUBSCRIBER (registry, fmt_sink or periscope_log_sink; default registry),
#              INTERLEAVED (rounds of the interleaved mode per run, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:?usage: scripts/ab-trace.sh BASE [ROUNDS]}
rounds=${2:-4}
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" 2>/dev/null || true; rm -rf "$work"' EXIT

# The bench binary of the tree in the current directory, built in target directory $2,
# copied to $1.
build() {
  local bin
  bin=$(CARGO_TARGET_DIR=$2 cargo bench -p periscope-trace --bench server_layer --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("target", {}).get("name") == "server_layer" and message.get("executable"):
        print(message["executable"])')
  cp "$bin" "$1"
}

echo "building the working tree" >&2
build "$work/new" "$target"
git worktree add --detach -q "$work/base" "$base"
cp crates/periscope-trace/benches/server_layer.rs "$work/base/crates/periscope-trace/benches/"
echo "building $base" >&2
# In a target directory of its own: cargo finds a crate's sources by their paths inside the
# package, so the base's build in the working tree's directory would look up to date for the
# working tree's next build, which would then run the base's code.
(cd "$work/base" && build "$work/old" "$target/ab-base")

python3 - "$work" "$rounds" "${SUBSCRIBER:-registry}" "${INTERLEAVED:-300}" <<'PY'
import os, statistics, subprocess, sys

work, rounds, subscriber, interleaved = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
environment = dict(os.environ, TRACE_BENCH_INTERLEAVED=f"{subscriber}/{interleaved}")
ratios = {}
for round_ in range(rounds):
    for build in ["old", "new"]:
        out = subprocess.run(
            [f"{work}/{build}"], env=environment, capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            kind = cells[0].removesuffix(f"_{subscriber}")
            if kind not in ("edge", "internal"):
                continue
            noop, ours, theirs = float(cells[1]), float(cells[2]), float(cells[5])
            ratio = (ours - noop) / (theirs - noop)
            ratios.setdefault((build, kind), []).append(ratio)
            print(f"round {round_ + 1} {build} {kind}: periscope {ours - noop:.0f} ns, "
                  f"same job {theirs - noop:.0f} ns, ratio {ratio:.2f}", flush=True)
print(f"| build | request | ratio to `tower_http_same_job` ({subscriber}): median (range) |")
print("| --- | --- | --- |")
for (build, kind), r in sorted(ratios.items()):
    label = "working tree" if build == "new" else "base"
    print(f"| {label} | {kind} | **{statistics.median(r):.2f}** ({min(r):.2f}–{max(r):.2f}) |")
PY
