#!/usr/bin/env bash
# The video experiment of docs/experiments/video.md (paper section 11):
# the default model, objective and budget trained on still scenes and on
# moving scenes, each evaluated on the held-out still scenes and on the
# held-out moving sequences, into runs/video/<name>/:
#   static        still scenes (the embedded default)
#   moving        moving scenes (data.source = "moving_scenes", 8 frames)
#   moving-next   moving scenes, every frame's students distilled toward
#                 the next frame's end (train.distill_target = "next_frame")
# Each run's summary.json is its evaluation on its own data; the other
# data's evaluation goes to eval-moving.json (static) or eval-still.json
# (the moving runs). The table at the end is read from those files.
#
# Usage: scripts/video-experiment.sh [STEPS]   (default 500)
# A run whose summary.json exists and whose command.txt is this exact
# command is kept, anything else is rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-500}
case $steps in '' | *[!0-9]* | 0)
  echo "STEPS must be a positive integer, got '$steps'" >&2; exit 2 ;;
esac
cargo build --release --locked
glom=${CARGO_TARGET_DIR:-target}/release/glom
out=runs/video
mkdir -p "$out"

train() {
  local name=$1; shift
  local dir=$out/$name
  local cmd=("$glom" train --out "$dir" --set train.steps="$steps" --set metrics.listen=127.0.0.1:0 "$@")
  if [ -f "$dir/summary.json" ] && [ "$(cat "$dir/command.txt" 2>/dev/null)" = "${cmd[*]}" ]; then
    echo "skip $name (done)"; return
  fi
  rm -rf "${dir:?}"
  echo "== $name"
  "${cmd[@]}"
  echo "${cmd[*]}" > "$dir/command.txt"
}

# `glom eval` of run NAME on the other data, into FILE.
cross() {
  local name=$1 file=$2; shift 2
  local dir=$out/$name
  if [ -f "$dir/$file" ]; then echo "skip $name/$file (done)"; return; fi
  echo "== $name/$file"
  "$glom" eval --checkpoint "$dir/checkpoints/final" --json "$@" > "$dir/$file.tmp"
  mv "$dir/$file.tmp" "$dir/$file"
}

moving=(--set data.source='"moving_scenes"')
train static
train moving "${moving[@]}"
train moving-next "${moving[@]}" --set train.distill_target='"next_frame"'
cross static eval-moving.json "${moving[@]}"
cross moving eval-still.json --set data.source='"scenes"'
cross moving-next eval-still.json --set data.source='"scenes"'

# One row per (run, held-out data): the trained model, then its random init.
row() {
  local run=$1 data=$2 file=$3
  jq -r --arg run "$run" --arg data "$data" '
    def f(x): if x == null then "-" else (x * 1000 | round / 1000 | tostring) end;
    def best(a): if a == null then null else (a | max) end;
    [$run, $data,
     f(.island_ari_object), f(.island_ari_part), f(.fg_ari_object_k),
     f(best(.island_ari_object_over_frames_by_level)),
     (if .temporal_stability_by_level == null then "-"
      else (.temporal_stability_by_level | map(f(.)) | join(" ")) end),
     f(.probe_accuracy), f(.baseline.island_ari_object), f(.baseline.probe_accuracy)]
    | "| " + join(" | ") + " |"' "$file"
}
echo
echo "| trained on | evaluated on | ARI object | ARI part | fg obj k | ARI object over frames (best level) | temporal stability by level | probe | random init: ARI object | random init: probe |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
row static still "$out/static/summary.json"
row static moving "$out/static/eval-moving.json"
row moving still "$out/moving/eval-still.json"
row moving moving "$out/moving/summary.json"
row moving-next still "$out/moving-next/eval-still.json"
row moving-next moving "$out/moving-next/summary.json"
