#!/usr/bin/env bash
# One-thread training step time of two glom binaries, run at the same time
# so that both see the same moments of a shared machine: each on one core
# (taskset), one thread (RAYON_NUM_THREADS=1), the cores swapped every
# round. Prints, per round, the median `step_seconds` (ms) of steps 4..STEPS
# of each binary's metrics.jsonl, then the geometric mean over rounds of B's
# time over A's: the two cores of a shared machine need not run at the
# same speed, and with the cores swapped every round an even number of
# rounds cancels that difference.
#
# Usage: scripts/paired-steps.sh A_BIN B_BIN [ROUNDS] [STEPS] [extra glom train args...]
# (default 4 rounds of 40 steps; give an even number of the default configuration). Needs two
# cores; use it for changes of a few per cent, which sequential runs on a
# noisy machine cannot show (docs/experiments/performance.md).
set -euo pipefail
a=$1
b=$2
rounds=${3:-4}
steps=${4:-40}
shift $(($# < 4 ? $# : 4))
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "paired-steps: $bin is not an executable" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() { # binary core out
  RAYON_NUM_THREADS=1 taskset -c "$2" "$1" train --no-eval --workers 1 --out "$3" \
    --set "train.steps=$steps" --set train.log_every=1 --set metrics.listen=127.0.0.1:0 \
    "${@:4}" >"$3.log" 2>&1 || { echo "paired-steps: $1 failed, see its log:" >&2; tail -5 "$3.log" >&2; exit 1; }
}
median() {
  python3 -c "
import json, sys
s = sorted(json.loads(l)['step_seconds'] for l in open(sys.argv[1])
           if 'step_seconds' in l and json.loads(l).get('step', 0) >= 4)
print(f'{1e3 * s[len(s) // 2]:.1f}')" "$1"
}

ratios=()
for i in $(seq "$rounds"); do
  if [ $((i % 2)) = 1 ]; then ca=0 cb=1; else ca=1 cb=0; fi
  run "$a" "$ca" "$tmp/a$i" "$@" &
  pa=$!
  run "$b" "$cb" "$tmp/b$i" "$@" &
  pb=$!
  wait "$pa"
  wait "$pb"
  ma=$(median "$tmp/a$i/metrics.jsonl")
  mb=$(median "$tmp/b$i/metrics.jsonl")
  echo "round $i: A $ma ms  B $mb ms"
  ratios+=("$(python3 -c "print($mb / $ma)")")
done
python3 -c "
import math, sys
r = [float(v) for v in sys.argv[1:]]
print(f'B / A, geometric mean of {len(r)} rounds: {math.exp(sum(map(math.log, r)) / len(r)):.3f}')" "${ratios[@]}"
