#!/usr/bin/env bash
# The sweep of docs/experiments/objective-sweep.md: the awake objective's
# anti-collapse terms (docs/design.md section 2, terms 4-7) and their weights,
# on the synthetic scenes and on Fashion-MNIST (apt-get install
# dataset-fashion-mnist), every run evaluated at several checkpoints so that
# each objective is judged by its curve over steps, not by one point; then
# the table with `glom table`.
#
# Every run starts from the embedded default with the anti-collapse terms
# switched off and a batch of 32 images (the terms' statistics are over the
# batch), then adds its own terms.
#
# Usage: scripts/objective-sweep.sh [STEPS] [EVAL_EVERY]   (default 300 100)
# Environment: SWEEP_RUNS   run directories (default runs/objective-sweep)
#              SWEEP_TABLE  the table (default docs/experiments/objective-sweep.md)
#              SWEEP_ONLY   run only the runs whose name contains this
# Each run goes to $SWEEP_RUNS/<name>/ with command.txt beside its
# summary.json and curve/step-<N>.json (`glom eval --json` of checkpoint
# step-N, on the first 64 held-out images and a 500-image probe); a run
# whose summary.json exists and whose command.txt is this exact command is
# kept, anything else is rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
every=${2:-100}
for v in "$steps" "$every"; do
  case $v in '' | *[!0-9]* | 0)
    echo "STEPS and EVAL_EVERY must be positive integers, got '$v'" >&2; exit 2 ;;
  esac
done
out=${SWEEP_RUNS:-runs/objective-sweep}
table=${SWEEP_TABLE:-docs/experiments/objective-sweep.md}
only=${SWEEP_ONLY:-}
cargo build --release --locked
glom=${CARGO_TARGET_DIR:-target}/release/glom
mkdir -p "$out"

off=(--set train.variance_weight=0 --set train.covariance_weight=0
  --set train.contrastive_weight=0 --set train.autoencoder_weight=0)
common=(--set train.steps="$steps" --set checkpoint.every_steps="$every" --set train.batch_size=32
  --set metrics.listen=127.0.0.1:0 "${off[@]}")
fm=(--config configs/fashion-mnist.toml)
curve_eval=(--set eval.images=64 --set eval.probe_images=500)
names=()

run() {
  local name=$1; shift
  local dir=$out/$name
  local cmd=("$glom" train --out "$dir" "${common[@]}" "$@")
  [ -n "$only" ] && [[ $name != *"$only"* ]] && return
  names+=("$dir")
  if [ -f "$dir/summary.json" ] && [ "$(cat "$dir/command.txt" 2>/dev/null)" = "${cmd[*]}" ]; then
    echo "skip $name (done)"; return
  fi
  rm -rf "${dir:?}"
  echo "== $name"
  "${cmd[@]}"
  mkdir -p "$dir/curve"
  for ck in "$dir"/checkpoints/step-*; do
    local n=${ck##*/step-}
    echo "   eval $name step $n"
    "$glom" eval --checkpoint "$ck" --json "${curve_eval[@]}" > "$dir/curve/step-$n.json"
  done
  echo "${cmd[*]}" > "$dir/command.txt"
}

var=(--set train.variance_weight)
cov=(--set train.covariance_weight)
nce=(--set train.contrastive_weight)
ae=(--set train.autoencoder_weight)
for data in scenes fmnist; do
  extra=()
  [ "$data" = fmnist ] && extra=("${fm[@]}")
  run "$data-positive-only" "${extra[@]}"
  run "$data-var10-cov10" "${extra[@]}" "${var[@]}"=10 "${cov[@]}"=10
  [ "$data" = fmnist ] && continue
  run "$data-autoencoder" "${ae[@]}"=1
  run "$data-infonce" "${nce[@]}"=0.5
  run "$data-var5-cov10" "${var[@]}"=5 "${cov[@]}"=10
  run "$data-hinge10-cov10" "${var[@]}"=10 --set train.variance_form=hinge "${cov[@]}"=10
done

"$glom" table "${names[@]}" --out "$table" --command "scripts/objective-sweep.sh $steps $every"
# glom table titles its output for the variants; this file is the sweep.
sed -i '1s/.*/# The awake objective: which anti-collapse terms keep GLOM alive/' "$table"
