#!/usr/bin/env bash
# One-thread training step time of two glom binaries, run at the same time
# so that both see the same moments of a shared machine: each on one core
# (taskset), one thread (RAYON_NUM_THREADS=1), the cores swapped every
# round. Prints, per round, the median `step_seconds` (ms) of steps 4 to
# STEPS of each binary's metrics.jsonl (the first three are warm-up), then
# the geometric mean over rounds of B's time over A's: the two cores of a
# shared machine need not run at the same speed, and with the cores
# swapped every round an even number of rounds cancels that difference.
#
# Usage: scripts/paired-steps.sh A_BIN B_BIN [ROUNDS] [STEPS] [glom train args...]
# (default 4 rounds of 40 steps of the default configuration; extra
# `glom train` arguments, e.g. `--set model.dim=64`, need ROUNDS and STEPS
# before them). Needs two cores; use it for changes of a few per cent,
# which sequential runs on a noisy machine cannot show
# (docs/experiments/performance.md).
set -euo pipefail
usage="usage: scripts/paired-steps.sh A_BIN B_BIN [ROUNDS] [STEPS] [glom train args...]"
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
a=$1
b=$2
rounds=${3:-4}
steps=${4:-40}
shift $(($# < 4 ? $# : 4))
for bin in "$a" "$b"; do
  if [ -d "$bin" ]; then
    echo "paired-steps: $bin is a directory, not a glom binary" >&2
    exit 2
  fi
  if [ ! -f "$bin" ]; then
    echo "paired-steps: $bin: no such file" >&2
    exit 2
  fi
  if [ ! -x "$bin" ]; then
    echo "paired-steps: $bin is not executable" >&2
    exit 2
  fi
done
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "paired-steps: ROUNDS must be a whole number >= 1, got '$rounds'; $usage" >&2
  exit 2
fi
if ! [[ $steps =~ ^[0-9]+$ ]] || [ "$steps" -lt 5 ]; then
  echo "paired-steps: STEPS must be a whole number >= 5 (steps 4 to STEPS are timed), got '$steps'; $usage" >&2
  exit 2
fi
if [ $((rounds % 2)) = 1 ]; then
  echo "paired-steps: $rounds rounds is odd: the two cores' difference does not cancel" >&2
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  # Each run is a subshell whose child is taskset's glom: stop both.
  for p in "${pids[@]}"; do
    pkill -TERM -P "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

run() { # binary core out [glom train args...]
  if ! RAYON_NUM_THREADS=1 taskset -c "$2" "$1" train --no-eval --workers 1 --out "$3" \
    --set "train.steps=$steps" --set train.log_every=1 --set metrics.listen=127.0.0.1:0 \
    "${@:4}" >"$3.log" 2>&1; then
    echo "paired-steps: $1 failed; the end of its output:" >&2
    tail -5 "$3.log" >&2
    return 1
  fi
}
median() {
  python3 -c "
import json, sys
s = sorted(r['step_seconds'] for r in map(json.loads, open(sys.argv[1]))
           if 'step_seconds' in r and r.get('step', 0) >= 4)
print(f'{1e3 * s[len(s) // 2]:.1f}')" "$1"
}

ratios=()
for i in $(seq "$rounds"); do
  if [ $((i % 2)) = 1 ]; then ca=0 cb=1; else ca=1 cb=0; fi
  run "$a" "$ca" "$tmp/a$i" "$@" &
  pids=($!)
  run "$b" "$cb" "$tmp/b$i" "$@" &
  pids+=($!)
  # Either failing stops both (the trap kills the other).
  wait "${pids[0]}"
  wait "${pids[1]}"
  pids=()
  ma=$(median "$tmp/a$i/metrics.jsonl")
  mb=$(median "$tmp/b$i/metrics.jsonl")
  echo "round $i: A $ma ms  B $mb ms"
  ratios+=("$(python3 -c "print($mb / $ma)")")
done
python3 -c "
import math, sys
r = [float(v) for v in sys.argv[1:]]
print(f'B / A, geometric mean of {len(r)} rounds: {math.exp(sum(map(math.log, r)) / len(r)):.3f}')" "${ratios[@]}"
