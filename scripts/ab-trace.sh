#!/usr/bin/env bash
# Times the server layer of the working tree against another commit's, the two builds of
# periscope-trace's `server_layer` bench run in turn, so both see the same load: on a shared
# machine whose times move by a factor of two between runs, this is what tells a 5–10 % change
# apart (instruction counts miss what atomic operations and cache misses cost).
#
# For each round and build: periscope's and `tower_http_same_job`'s overheads over the no-op
# service, and their ratio taken within that run; at the end, each build's median ratio and
# range per request kind.
#
# Usage: scripts/ab-trace.sh BASE [ROUNDS]   (BASE: a commit; ROUNDS default 6)
# Environment: SUBSCRIBER (registry, fmt_sink or periscope_log_sink; default registry),
#              MEASURE (seconds per contender, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:?usage: scripts/ab-trace.sh BASE [ROUNDS]}
rounds=${2:-6}
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" 2>/dev/null || true; rm -rf "$work"' EXIT

# The bench binary of the tree in the current directory, copied to $1.
build() {
  local bin
  bin=$(CARGO_TARGET_DIR=$target cargo bench -p periscope-trace --bench server_layer --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("target", {}).get("name") == "server_layer" and message.get("executable"):
        print(message["executable"])')
  cp "$bin" "$1"
}

echo "building the working tree" >&2
build "$work/new"
git worktree add --detach -q "$work/base" "$base"
echo "building $base" >&2
(cd "$work/base" && build "$work/old")

python3 - "$work" "$rounds" "${SUBSCRIBER:-registry}" "${MEASURE:-3}" <<'PY'
import re, statistics, subprocess, sys

work, rounds, subscriber, measure = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
units = {"ns": 1, "µs": 1e3, "ms": 1e6}
contenders = ["noop", "periscope", "tower_http_same_job"]
pattern = f"_{subscriber}/({'|'.join(contenders)})$"
ratios = {}
for round_ in range(rounds):
    for build in ["old", "new"]:
        out = subprocess.run(
            [f"{work}/{build}", "--bench", "--warm-up-time", "1", "--measurement-time", measure,
             "--noplot", pattern],
            capture_output=True, text=True, check=True,
        ).stdout
        times, name = {}, None
        for line in out.splitlines():
            if m := re.match(r"^(\S+/\S+)", line):
                name = m.group(1)
            if (m := re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)) and name:
                times[name] = float(m.group(1)) * units[m.group(2)]
        for kind in ["edge", "internal"]:
            group = f"{kind}_{subscriber}"
            noop = times[f"{group}/noop"]
            ours = times[f"{group}/periscope"] - noop
            theirs = times[f"{group}/tower_http_same_job"] - noop
            ratios.setdefault((build, kind), []).append(ours / theirs)
            print(f"round {round_ + 1} {build} {kind}: periscope {ours:.0f} ns, "
                  f"same job {theirs:.0f} ns, ratio {ours / theirs:.2f}", flush=True)
print(f"| build | request | ratio to `tower_http_same_job` ({subscriber}): median (range) |")
print("| --- | --- | --- |")
for (build, kind), r in sorted(ratios.items()):
    label = "working tree" if build == "new" else "base"
    print(f"| {label} | {kind} | **{statistics.median(r):.2f}** ({min(r):.2f}–{max(r):.2f}) |")
PY
