#!/usr/bin/env bash
# Chaos test of automatic recovery (DESIGN.md section 7): a coordinator and
# two workers, separate processes on loopback, train a small model while
# N times a random process is killed with SIGKILL at a random moment (a
# third of the kills wait for a checkpoint being written). A killed worker
# is replaced by a new process of another name; a killed coordinator is
# started again on the same address with --resume from the latest
# complete checkpoint, and the workers join it by themselves. At the end:
#
#   survived K/N, corrupt checkpoints C, bitwise equal to the uninterrupted run: yes/no
#
# K counts the kills after which training got past the step it had reached
# (a newer complete checkpoint, or the end); C the checkpoint directories
# whose manifest names a shard that is missing or does not match its
# SHA-256; the last field compares every tensor of the final checkpoint
# with a run that never failed. Exit status 0 only for N/N, 0, yes.
#
# Usage: scripts/chaos.sh [N] [--glom BIN] [--out DIR] [--seed S]
# (default N = 20, the release binary, a temporary directory, seed = $$).
set -euo pipefail
cd "$(dirname "$0")/.."

kills=20
glom=${CARGO_TARGET_DIR:-target}/release/glom
out=""
seed=$$
while [ $# -gt 0 ]; do
  case $1 in
    --glom) glom=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    [0-9]*) kills=$1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$glom" ] || { echo "no glom binary at $glom (cargo build --release)" >&2; exit 2; }
glom=$(readlink -f "$glom")
if [ -z "$out" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
cd "$out"
RANDOM=$seed

# A small model: a step takes milliseconds, so kills land everywhere.
steps=$(( 100 + 100 * kills ))
sets=(--set model.levels=3 --set model.dim=8 --set model.hidden=16 --set model.iterations=3
      --set data.image_size=16 --set train.batch_size=4 --set train.steps=$steps
      --set checkpoint.every_steps=5 --set train.log_every=50 --set metrics.listen=127.0.0.1:0
      --set cluster.rejoin_seconds=30 --set cluster.max_restarts=$(( kills + 1 )))

echo "chaos: $kills kills over $steps steps in $out (seed $seed)"
"$glom" train --no-eval --workers 2 --out ref "${sets[@]}" > ref.log 2>&1 \
  || { echo "the uninterrupted run failed: $(tail -1 ref.log)" >&2; exit 1; }
"$glom" certs init --out certs --workers $(( kills + 2 )) > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
export RUST_LOG=info

pids=()      # pids[0]: the coordinator; then the workers
runs=()      # the run directory of every coordinator, in order
next_worker=0

start_coordinator() { # [--resume DIR]
  local dir=run-${#runs[@]}
  runs+=("$dir")
  "$glom" coordinator --no-eval --listen "$addr" --certs certs --workers 2 --out "$dir" \
    "$@" "${sets[@]}" > "$dir.log" 2>&1 &
  pids[0]=$!
}

start_worker() {
  local name=worker-$next_worker
  next_worker=$(( next_worker + 1 ))
  "$glom" worker --coordinator "$addr" --name "$name" --certs certs --listen 127.0.0.1:0 \
    --wait 120 "${sets[@]}" > "$name.log" 2>&1 &
  pids+=($!)
}

# Checkpoint directories whose manifest is there, and the latest of them.
complete() { ls -d run-*/checkpoints/step-*/manifest.json 2>/dev/null | sed 's,/manifest.json$,,' || true; }
latest() {
  complete | awk -F'step-' '{ print $NF " " $0 }' | sort -n | tail -1 | cut -d' ' -f2-
}
latest_step() { local l; l=$(latest); [ -n "$l" ] && echo "${l##*step-}" || echo -1; }
alive() { kill -0 "$1" 2>/dev/null; }
finished() { (( $(latest_step) >= steps )); }

start_coordinator
sleep 0.3
start_worker
start_worker

survived=0
for k in $(seq 1 "$kills"); do
  finished && { echo "the run finished before kill $k"; break; }
  if (( RANDOM % 3 == 0 )); then
    # At a checkpoint: as soon as a newer step directory has a shard.
    before=$(latest_step)
    for _ in $(seq 1 500); do
      ls run-*/checkpoints/step-*/shard-*.safetensors 2>/dev/null \
        | awk -F'step-' '{ split($NF, a, "/"); print a[1] }' | sort -n | tail -1 \
        | { read -r s; [ "${s:--1}" -gt "$before" ]; } && break
      sleep 0.01
    done
  else
    sleep "0.$(( RANDOM % 9 + 1 ))"
  fi
  at=$(latest_step)
  if (( RANDOM % 3 == 0 )); then
    victim=0 what=coordinator
  else
    live=()
    for i in "${!pids[@]}"; do (( i > 0 )) && alive "${pids[$i]}" && live+=("$i"); done
    victim=${live[$(( RANDOM % ${#live[@]} ))]}
    what="a worker"
  fi
  kill -9 "${pids[$victim]}" 2>/dev/null || true
  wait "${pids[$victim]}" 2>/dev/null || true
  if (( at < 0 )); then where="before the first checkpoint"; else where="after checkpoint $at"; fi
  echo "kill $k: $what, $where"
  if (( victim == 0 )); then
    resume=$(latest)
    if [ -n "$resume" ]; then start_coordinator --resume "$resume"; else start_coordinator; fi
  else
    unset "pids[$victim]"
    pids=("${pids[@]}")
    start_worker
  fi
  # Survived: training gets past the checkpoint it had reached.
  for _ in $(seq 1 1200); do
    if finished || (( $(latest_step) > at )); then survived=$(( survived + 1 )); break; fi
    alive "${pids[0]}" || break
    sleep 0.05
  done
done

# Let the run finish.
for _ in $(seq 1 2400); do
  alive "${pids[0]}" || break
  sleep 0.05
done
alive "${pids[0]}" && kill -9 "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
sleep 1
for p in "${pids[@]:1}"; do kill -9 "$p" 2>/dev/null || true; done

python3 - "$kills" "$survived" "${runs[@]}" <<'PY'
import hashlib, json, os, struct, sys

kills, survived, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def tensors(d):
    """Every tensor of every shard of checkpoint d: name -> raw bytes."""
    out = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".safetensors"):
            continue
        raw = open(os.path.join(d, f), "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        for name, t in header.items():
            if name != "__metadata__":
                a, b = t["data_offsets"]
                out[name] = raw[8 + n + a:8 + n + b]
    return out

corrupt = 0
for run in runs:
    root = os.path.join(run, "checkpoints")
    for ck in os.listdir(root) if os.path.isdir(root) else []:
        m = os.path.join(root, ck, "manifest.json")
        if not os.path.exists(m):
            continue
        try:
            for s in json.load(open(m))["shards"]:
                data = open(os.path.join(root, ck, s["file"]), "rb").read()
                if len(data) != s["bytes"] or hashlib.sha256(data).hexdigest() != s["sha256"]:
                    raise ValueError(s["file"])
        except Exception as e:
            corrupt += 1
            print(f"corrupt: {root}/{ck}: {e}", file=sys.stderr)

# The last checkpoint of the run (the final one, whichever coordinator
# wrote it).
done = [(json.load(open(os.path.join(r, "checkpoints", c, "manifest.json")))["step"],
         os.path.join(r, "checkpoints", c))
        for r in runs if os.path.isdir(os.path.join(r, "checkpoints"))
        for c in os.listdir(os.path.join(r, "checkpoints"))
        if c.startswith("step-") and os.path.exists(os.path.join(r, "checkpoints", c, "manifest.json"))]
want = json.load(open("ref/checkpoints/final/manifest.json"))["step"]
last = max(done) if done else (None, None)
same = last[0] == want and tensors(last[1]) == tensors("ref/checkpoints/final")
print(f"survived {survived}/{kills}, corrupt checkpoints {corrupt}, "
      f"bitwise equal to the uninterrupted run: {'yes' if same else 'no'}")
sys.exit(0 if (survived == kills and corrupt == 0 and same) else 1)
PY
