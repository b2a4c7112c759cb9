#!/usr/bin/env bash
# Soak test: a coordinator and four workers, separate processes on
# loopback, train for MINUTES minutes; every SAMPLE seconds the resident
# memory (VmRSS) and open file descriptors of every process are printed.
# At the end: each process's RSS growth from the first sample taken after
# warm-up (the first quarter of the run) to the last, and its fd counts.
# Goal for 60 minutes: RSS growth <= 5%, fds flat.
#
# Usage: scripts/soak.sh MINUTES [--glom BIN] [--out DIR] [--sample SECONDS]
#                                [-- extra `--set k=v` args for every process]
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { echo "usage: scripts/soak.sh MINUTES [--glom BIN] [--out DIR] [--sample S]" >&2; exit 2; }
minutes=$1; shift
glom=${CARGO_TARGET_DIR:-target}/release/glom
out=""
sample=30
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --glom) glom=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --sample) sample=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$glom" ] || { echo "no glom binary at $glom (cargo build --release)" >&2; exit 2; }
glom=$(readlink -f "$glom")
made=""
if [ -z "$out" ]; then out=$(mktemp -d); made=1; fi
mkdir -p "$out"
cd "$out"

# Long enough never to finish; checkpoints every 200 steps keep the
# checkpoint path in the loop too.
sets=(--set train.steps=100000000 --set checkpoint.every_steps=200 --set train.log_every=100
      --set metrics.listen=127.0.0.1:0 "${extra[@]}")
"$glom" certs init --out certs --workers 4 > /dev/null
"$glom" coordinator --no-eval --listen 127.0.0.1:0 --certs certs --workers 4 --out run \
  "${sets[@]}" > coordinator.log 2>&1 &
pids=($!)
names=(coordinator)
for _ in $(seq 1 200); do [ -s run/coordinator_addr.txt ] && break; sleep 0.1; done
addr=$(cat run/coordinator_addr.txt)
for i in 0 1 2 3; do
  "$glom" worker --coordinator "$addr" --name "worker-$i" --certs certs --listen 127.0.0.1:0 \
    "${sets[@]}" > "worker-$i.log" 2>&1 &
  pids+=($!)
  names+=("worker-$i")
done
cleanup() {
  kill -9 "${pids[@]}" 2>/dev/null || true
  if [ -n "$made" ]; then rm -rf "$out"; fi
}
trap cleanup EXIT

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

printf "%8s" "seconds"
for n in "${names[@]}"; do printf " %22s" "$n RSS kB / fds"; done
printf " %8s\n" "steps"
end=$(( $(date +%s) + minutes * 60 ))
start=$(date +%s)
declare -A first last fd_first fd_last
warm=$(( minutes * 60 / 4 ))
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(( $(date +%s) - start ))
  printf "%8d" "$now"
  for k in "${!pids[@]}"; do
    p=${pids[$k]}
    kill -0 "$p" 2>/dev/null || { echo; echo "${names[$k]} exited: $(tail -1 "${names[$k]}.log")" >&2; exit 1; }
    r=$(rss "$p") f=$(fds "$p")
    printf " %15s / %4s" "$r" "$f"
    if [ "$now" -ge "$warm" ] && [ -z "${first[$k]:-}" ]; then first[$k]=$r fd_first[$k]=$f; fi
    last[$k]=$r fd_last[$k]=$f
  done
  steps=$(grep -o '"step":[0-9]*' run/metrics.jsonl 2>/dev/null | tail -1 | cut -d: -f2)
  printf " %8s\n" "${steps:-0}"
  sleep "$sample"
done

echo "after warm-up (${warm} s) to the end:"
for k in "${!pids[@]}"; do
  a=${first[$k]:-${last[$k]}} b=${last[$k]}
  growth=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%+.1f", (a > 0 ? 100 * (b - a) / a : 0) }')
  echo "  ${names[$k]}: RSS ${a} -> ${b} kB (${growth}%), fds ${fd_first[$k]:-${fd_last[$k]}} -> ${fd_last[$k]}"
done
