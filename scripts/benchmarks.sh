#!/usr/bin/env bash
# Train and evaluate the runs behind docs/experiments/benchmarks.md, each
# into runs/benchmarks/<name>/ (summary.json holds every figure, the
# references included: random init, k-means on patch colours, the patch-grid
# ceiling). Usage:
#   scripts/benchmarks.sh [TETROMINO_STEPS] [SPRITE_STEPS] [SPRITE_BPTT_STEPS]
# (default 500, 200 and SPRITE_STEPS: a 16x16 sprites grid is 4x the work
# per image; docs/experiments/benchmarks.md was taken with 200 80 40).
# BIN=path/to/glom uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
tetromino_steps=${1:-500}
sprite_steps=${2:-200}
sprite_bptt_steps=${3:-$sprite_steps}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked
  BIN=target/release/glom
fi
out=runs/benchmarks
mkdir -p "$out"

run() {
  local name=$1; shift
  if [ -f "$out/$name/summary.json" ]; then echo "skip $name (done)"; return; fi
  rm -rf "${out:?}/$name"
  echo "== $name"
  # Port 0: any free metrics port, so runs beside others do not clash.
  "$BIN" train --out "$out/$name" --set metrics.listen=127.0.0.1:0 "$@"
}

tetrominoes=(--set data.source=tetrominoes --set train.steps="$tetromino_steps")
sprites=(--set data.source=sprites)
run tetrominoes-default "${tetrominoes[@]}"
run tetrominoes-shared-bptt --config configs/shared-bptt.toml "${tetrominoes[@]}"
run sprites-default "${sprites[@]}" --set train.steps="$sprite_steps"
run sprites-shared-bptt --config configs/shared-bptt.toml "${sprites[@]}" --set train.steps="$sprite_bptt_steps"
echo "summaries: $out/*/summary.json"
