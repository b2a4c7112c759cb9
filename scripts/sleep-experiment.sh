#!/usr/bin/env bash
# The sleep experiment on synthetic scenes and Fashion-MNIST, into
# runs/sleep/<name>/:
#   (a) <data>-awake:      positive-only awake training (configs/sleep-awake.toml)
#   (b) <data>-scheduled:  the same with a sleep job every 250 steps that carries
#                          the default's anti-collapse terms on dreams
#                          (configs/sleep-scheduled.toml)
#   (d) <data>-awake-terms: the same budget with those terms awake instead
#                          (the embedded default)
#   (c) <data>-recovery/:  `glom sleep` on the last checkpoint of (a), then
#                          `glom eval` of both (does rank and probe accuracy come back?)
# Usage: scripts/sleep-experiment.sh [STEPS] [SLEEP_EVERY] [DATA]
#        (default 3000 250 "scenes fmnist"; DATA: scenes, fmnist or both)
# A short smoke run: scripts/sleep-experiment.sh 20 10
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3000}
every=${2:-250}
cargo build --release --locked
glom=target/release/glom
out=runs/sleep
mkdir -p "$out"
short=()
if [ "$steps" -lt 500 ]; then
  # Smoke runs: checkpoints and records at this scale too.
  short=(--set checkpoint.every_steps="$every" --set train.log_every=5 --set metrics.every_steps=5
         --set eval.images=16 --set eval.probe_images=64)
fi

train() {
  local name=$1; shift
  if [ -f "$out/$name/summary.json" ]; then echo "skip $name (done)"; return; fi
  rm -rf "${out:?}/$name"
  echo "== $name"
  "$glom" train --out "$out/$name" --set train.steps="$steps" --set metrics.listen=127.0.0.1:0 \
    "$@" "${short[@]}"
}

recover() {
  local data=$1; shift
  local src="$out/$data-awake/checkpoints/final" dir="$out/$data-recovery"
  if [ -f "$dir/slept/sleep.json" ]; then echo "skip $data-recovery (done)"; return; fi
  rm -rf "${dir:?}"
  mkdir -p "$dir"
  echo "== $data-recovery"
  "$glom" sleep --checkpoint "$src" --out "$dir/slept" "$@" | tee "$dir/sleep.txt"
  "$glom" eval --checkpoint "$src" --json "${short_eval[@]}" > "$dir/eval-before.json"
  "$glom" eval --checkpoint "$dir/slept" --json "${short_eval[@]}" > "$dir/eval-after.json"
}

short_eval=()
if [ "$steps" -lt 500 ]; then short_eval=(--set eval.images=16 --set eval.probe_images=64); fi

datasets=${3:-scenes fmnist}
for data in $datasets; do
  case $data in scenes | fmnist) ;; *) echo "DATA must be scenes and/or fmnist, got '$data'" >&2; exit 2 ;; esac
done
for data in $datasets; do
  extra=()
  if [ "$data" = fmnist ]; then extra=(--set data.source=fashion_mnist); fi
  train "$data-awake" --config configs/sleep-awake.toml "${extra[@]}"
  train "$data-scheduled" --config configs/sleep-scheduled.toml --set sleep.every_steps="$every" "${extra[@]}"
  # The embedded default's awake terms (configs/default.toml [train]).
  train "$data-awake-terms" --config configs/sleep-awake.toml --set train.variance_weight=2 \
    --set train.covariance_weight=10 "${extra[@]}"
  recover "$data"
done
echo "results in $out/"
