#!/usr/bin/env bash
# Train and evaluate the variants of docs/experiments/variants.md with the
# same budget, on the synthetic scenes and on Fashion-MNIST (apt-get install
# dataset-fashion-mnist), then write the table with `glom table`:
#   shared + BPTT, shared + local, per-location + local (co-distillation, the
#   default), per-location + local without distillation, per-location + BPTT.
# Every run uses one worker (shared weights and BPTT run on one worker only;
# one for all keeps images/s comparable) and a free port for its metrics.
#
# Usage: scripts/experiments.sh [STEPS] [DATA]   (default 300 "scenes fmnist";
#        DATA: scenes, fmnist or both)
# Environment: VARIANTS_RUNS  run directories (default runs/variants)
#              VARIANTS_TABLE the table        (default docs/experiments/variants.md)
# Each run goes to $VARIANTS_RUNS/<name>/ with command.txt beside its
# summary.json; a run whose summary.json exists and whose command.txt is this
# exact command is kept, anything else is rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
case $steps in '' | *[!0-9]* | 0)
  echo "STEPS must be a positive integer, got '$steps'" >&2; exit 2 ;;
esac
datasets=${2:-scenes fmnist}
for data in $datasets; do
  case $data in scenes | fmnist) ;; *) echo "DATA must be scenes and/or fmnist, got '$data'" >&2; exit 2 ;; esac
done
out=${VARIANTS_RUNS:-runs/variants}
table=${VARIANTS_TABLE:-docs/experiments/variants.md}
cargo build --release --locked
glom=${CARGO_TARGET_DIR:-target}/release/glom
mkdir -p "$out"

common=(--set train.steps="$steps" --set cluster.workers=1 --set metrics.listen=127.0.0.1:0)
fm=(--config configs/fashion-mnist.toml)
names=()

run() {
  local name=$1; shift
  local dir=$out/$name
  local cmd=("$glom" train --out "$dir" "${common[@]}" "$@")
  names+=("$dir")
  if [ -f "$dir/summary.json" ] && [ "$(cat "$dir/command.txt" 2>/dev/null)" = "${cmd[*]}" ]; then
    echo "skip $name (done)"; return
  fi
  rm -rf "${dir:?}"
  echo "== $name"
  "${cmd[@]}"
  echo "${cmd[*]}" > "$dir/command.txt"
}

for data in $datasets; do
  extra=()
  [ "$data" = fmnist ] && extra=("${fm[@]}")
  run "$data-shared-bptt" "${extra[@]}" --set model.weights=shared --set train.learning=bptt
  run "$data-shared-local" "${extra[@]}" --set model.weights=shared
  run "$data-codistill" "${extra[@]}"
  run "$data-no-distill" "${extra[@]}" --set train.distill_weight=0
  run "$data-per-location-bptt" "${extra[@]}" --set train.learning=bptt
done

command="scripts/experiments.sh $steps"
[ -n "${2:-}" ] && command="$command '$datasets'"
"$glom" table "${names[@]}" --out "$table" --command "$command"
