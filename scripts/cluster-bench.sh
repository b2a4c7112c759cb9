#!/usr/bin/env bash
# Step time, halo traffic and halo wait of the embedded cluster with 1, 2 and
# 4 workers (f32 halos) and 2 and 4 workers (bf16 halos), all in one
# invocation so the ratios compare runs made under the same conditions.
# Usage: scripts/cluster-bench.sh [STEPS] [extra glom train args...]
# (default 100 steps of the default configuration; runs go to a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-100}
shift || true
cargo build --release --locked -q
glom=${CARGO_TARGET_DIR:-target}/release/glom
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {
  local name=$1 workers=$2 precision=$3; shift 3
  "$glom" train --no-eval --out "$tmp/$name" --workers "$workers" \
    --set train.steps="$steps" --set metrics.enabled=false \
    --set cluster.halo_precision="\"$precision\"" "$@" >"$tmp/$name.log" 2>&1 \
    || { echo "run $name failed:"; tail -5 "$tmp/$name.log"; exit 1; }
}
for cfg in "w1 1 f32" "w2 2 f32" "w4 4 f32" "w2-bf16 2 bf16" "w4-bf16 4 bf16"; do
  # shellcheck disable=SC2086
  run $cfg "$@"
done
python3 - "$tmp" <<'PY'
import json, sys, os
tmp = sys.argv[1]
rows = []
for name in ["w1", "w2", "w4", "w2-bf16", "w4-bf16"]:
    s = json.load(open(os.path.join(tmp, name, "summary.json")))
    h = s["halo"]
    rows.append((name, s["workers"], s["images_per_s"], h["seconds_per_step"], h["wait_fraction"],
                 h["bytes_per_step"], h["payload_bytes_per_step"], h["framing_overhead"]))
base = rows[0][3]
print("| run | workers | images/s | s/step (slowest worker) | vs 1 worker | halo wait | halo bytes/step | plan minimum | framing overhead |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for n, w, ips, sps, wait, b, p, o in rows:
    print(f"| {n} | {w} | {ips:.1f} | {sps:.4f} | {sps / base:.2f}x | {100 * wait:.1f}% | {b:,.0f} | {p:,} | {100 * o:.3f}% |")
PY
