#!/usr/bin/env bash
# What instruction counts (`scripts/callgrind-trace.sh`) do not weigh, per request of the server
# layer and of tower-http's stack doing the same job, over a no-op service, from
# periscope-trace's `server_layer` bench. Counted by callgrind in a run of N2 and a run of N1
# calls, divided by N2 - N1:
#
# - atomic read-modify-write operations: each `lock`-prefixed instruction (and `xchg` with
#   memory) seen executed. An instruction count weighs one as one instruction; it takes from
#   several to some twenty cycles, by processor.
# - code lines: the 64-byte lines of machine code executed on every call (those holding an
#   instruction run at least 0.9 times a call). Once the bench loop's code outgrows the
#   processor's 32 KiB instruction cache, as it does with either stack, most such lines are
#   fetched again on every call, whatever their instruction counts.
#
# Both are reasons why a ratio by time differs from the ratio by instructions.
#
# Usage: scripts/atomics-trace.sh   (needs valgrind, objdump and python3)
# Environment: SUBSCRIBER (default registry), KINDS (default "edge internal"),
#              N1 (default 200), N2 (default 2200), DETAIL=1 (the counts per function too).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(cargo bench -p periscope-trace --bench server_layer --no-run --message-format=json \
  2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("target", {}).get("name") == "server_layer" and message.get("executable"):
        print(message["executable"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

subscriber=${SUBSCRIBER:-registry}
for kind in ${KINDS:-edge internal}; do
  for contender in noop periscope tower_http_same_job; do
    for calls in "${N1:-200}" "${N2:-2200}"; do
      TRACE_BENCH_RUN="$subscriber/$kind/$contender/$calls" valgrind --tool=callgrind \
        --dump-instr=yes --callgrind-out-file="$work/$kind.$contender.$calls" "$bin" 2>/dev/null
    done
  done
done

python3 - "$work" "$subscriber" "${KINDS:-edge internal}" "${N1:-200}" "${N2:-2200}" \
  "${DETAIL:-}" <<'PY'
import collections, re, subprocess, sys

work, subscriber, kinds, n1, n2, detail = sys.argv[1:]
n1, n2 = int(n1), int(n2)
NAMED = re.compile(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?")


def executed(path):
    """Executions of each (object, address), with the function it is in."""
    names, counts, functions = {}, collections.Counter(), {}
    obj = function = None
    address, call_line = 0, False
    for line in open(path):
        named = NAMED.match(line)
        if named:
            kind, key, name = named.groups()
            table = names.setdefault(kind.lstrip("c"), {})
            if name:
                table[key] = name
            if kind == "ob":
                obj = table[key]
            elif kind == "fn":
                function = table[key]
            continue
        if line.startswith("calls="):
            # The line after is the call's inclusive cost, not executions of its own.
            call_line = True
            continue
        if line[:1] not in "0123456789+-*":
            continue
        fields = line.split()
        position = fields[0]
        if position.startswith("0x"):
            address = int(position, 16)
        elif position[0] in "+-":
            address += int(position)
        if call_line:
            call_line = False
        elif len(fields) >= 3:
            counts[(obj, address)] += int(fields[2])
            functions[(obj, address)] = function
    return counts, functions


atomic_cache = {}


def atomics(obj):
    """Addresses of the object's atomic read-modify-write instructions."""
    if obj not in atomic_cache:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                                 capture_output=True, text=True).stdout
        atomic_cache[obj] = {
            int(m.group(1), 16)
            for m in re.finditer(r"^\s*([0-9a-f]+):\s+(?:lock\b|xchg\s+\S*\()", listing, re.M)
        }
    return atomic_cache[obj]


def per_call(kind, contender):
    """Atomic operations and code lines per call, by function."""
    (few, _), (many, functions) = (executed(f"{work}/{kind}.{contender}.{n}") for n in (n1, n2))
    atomic_ops, lines = collections.Counter(), collections.defaultdict(set)
    for (obj, address), count in many.items():
        per = (count - few[(obj, address)]) / (n2 - n1)
        if obj and address in atomics(obj):
            atomic_ops[functions[(obj, address)]] += per
        if per >= 0.9:
            lines[functions[(obj, address)]].add((obj, address // 64))
    return atomic_ops, lines


contenders = ("noop", "periscope", "tower_http_same_job")
print("| subscriber | request | measure | noop | periscope | tower_http_same_job | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for kind in kinds.split():
    counts = {c: per_call(kind, c) for c in contenders}
    atomic_ops = {c: sum(counts[c][0].values()) for c in contenders}
    lines = {c: len(set().union(*counts[c][1].values())) for c in contenders}
    for measure, total in (("atomic operations", atomic_ops), ("code lines", lines)):
        noop = total["noop"]
        ours, theirs = (total[c] - noop for c in contenders[1:])
        print(f"| {subscriber} | {kind} | {measure} | {noop:.0f} | {ours:.0f} | {theirs:.0f} "
              f"| {ours / theirs:.2f} |")
    if detail:
        for contender in contenders[1:]:
            over = counts[contender][0] - counts["noop"][0]
            for function, count in over.most_common():
                print(f"|   | {contender} | atomic operations | {count:.0f} | {function} | | |")
            noop_lines = set().union(*counts["noop"][1].values())
            by_function = collections.Counter(
                {f: len(s - noop_lines) for f, s in counts[contender][1].items()})
            for function, count in by_function.most_common():
                if count:
                    print(f"|   | {contender} | code lines | {count} | {function} | | |")
PY
