#!/usr/bin/env bash
# Run every fuzz target of fuzz/ for RUNS executions (default 1000000; the
# codec target, which reads what any peer on the network sends, runs ten
# times as many) and print one summary line per target.
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# installs nothing. Each target starts from fuzz/seeds/TARGET and keeps what
# it finds in fuzz/corpus/TARGET; a crash is saved under fuzz/artifacts/TARGET.
# The malloc limit is the frame cap of the protocol crate (MAX_FRAME_BYTES,
# 64 MiB): an allocation above it, whatever an input claims, is a failure.
#
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(codec manifest settings idx png_input)
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
  exit 2
fi

malloc_limit_mb=64
rss_limit_mb=1024
cargo +nightly fuzz build >/dev/null

summary=()
failed=0
for t in "${targets[@]}"; do
  n=$runs
  if [ "$t" = codec ]; then n=$((runs * 10)); fi
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -runs="$n" -malloc_limit_mb=$malloc_limit_mb -rss_limit_mb=$rss_limit_mb \
    -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  secs=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    result="ok, 0 crashes"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="FAILED (exit $rc${artifact:+, input $artifact}; log $log)"
  fi
  line="$t: ${execs:-?} executions in ${secs} s, peak RSS ${rss:-?} MB, $result"
  echo "$line"
  summary+=("$line")
  if [ "$rc" = 0 ]; then rm -f "$log"; fi
done

echo "--- fuzz summary (runs=$runs, codec x10, -malloc_limit_mb=$malloc_limit_mb -rss_limit_mb=$rss_limit_mb)"
printf '%s\n' "${summary[@]}"
exit $failed
