#!/usr/bin/env bash
# Run one offline sleep job (`glom sleep`) on the latest complete checkpoint
# of a run directory, into RUN_DIR/slept/step-<N>-<UTC time>/.
# Usage: scripts/sleep/sleep-latest.sh RUN_DIR [glom sleep options...]
#   e.g. scripts/sleep/sleep-latest.sh runs/long --set sleep.steps=200
# Env: GLOM (the binary, default `glom` on PATH).
# A checkpoint counts once its manifest.json exists (it is written last).
# Exits 0 without doing anything when there is no checkpoint yet.
set -euo pipefail
run=${1:?usage: sleep-latest.sh RUN_DIR [glom sleep options...]}
shift
glom=${GLOM:-glom}
latest=""
best=-1
for m in "$run"/checkpoints/step-*/manifest.json; do
  [ -e "$m" ] || continue
  dir=$(dirname "$m")
  n=${dir##*/step-}
  if [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$best" ]; then best=$n; latest=$dir; fi
done
if [ -z "$latest" ]; then
  echo "no complete checkpoint under $run/checkpoints yet" >&2
  exit 0
fi
out="$run/slept/step-$best-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run/slept"
exec "$glom" sleep --checkpoint "$latest" --out "$out" "$@"
