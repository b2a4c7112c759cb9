#!/usr/bin/env bash
# A multi-host run on one machine: three network namespaces joined by veth
# pairs to a bridge on 10.77.0.0/24, `glom coordinator` in the first, one
# `glom worker` in each of the others, talking QUIC with mutual TLS over
# the veth links (certificates from `glom certs init --hosts`). Optionally
# `tc netem` delays every packet a worker sends (worker -> coordinator and
# worker -> worker); where the kernel has no netem it exits 77 saying so.
#
# Needs root (CAP_NET_ADMIN) and iproute2; exits 77 with the reason when
# namespaces cannot be made here. Everything it makes is removed on exit.
#
# Usage: scripts/netns-cluster.sh [--delay-ms D] [--out DIR] [--glom BIN]
#                                 [-- extra `--set k=v` args for every process]
# Prints the run's step time and halo wait at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

delay=0
out=""
glom=${CARGO_TARGET_DIR:-target}/release/glom
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --delay-ms) delay=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --glom) glom=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$glom" ] || { echo "no glom binary at $glom (cargo build --release)" >&2; exit 2; }
command -v ip >/dev/null || { echo "skipped: iproute2 (ip) is not installed"; exit 77; }

id=$$
ns_c=glom-c-$id ns_1=glom-w1-$id ns_2=glom-w2-$id
if ! ip netns add "$ns_c" 2>/dev/null; then
  echo "skipped: cannot create network namespaces here (needs root / CAP_NET_ADMIN)"
  exit 77
fi
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$ns_c" "$ns_1" "$ns_2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns_1"
ip netns add "$ns_2"
for ns in "$ns_c" "$ns_1" "$ns_2"; do ip -n "$ns" link set lo up; done
ip -n "$ns_c" link add br0 type bridge
ip -n "$ns_c" addr add 10.77.0.1/24 dev br0
ip -n "$ns_c" link set br0 up
for i in 1 2; do
  ns_var=ns_$i
  ns=${!ns_var}
  host=gh$i-$id  # veth ends, named uniquely while in the root namespace
  peer=gp$i-$id
  ip link add "${host:0:15}" type veth peer name "${peer:0:15}"
  ip link set "${host:0:15}" netns "$ns_c"
  ip link set "${peer:0:15}" netns "$ns"
  ip -n "$ns_c" link set "${host:0:15}" master br0 up
  ip -n "$ns" link set "${peer:0:15}" name eth0
  ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0
  ip -n "$ns" link set eth0 up
  if [ "$delay" != 0 ] && ! ip netns exec "$ns" tc qdisc add dev eth0 root netem delay "${delay}ms"; then
    echo "skipped: tc netem is not available in this kernel (no sch_netem)"
    exit 77
  fi
done

"$glom" certs init --out "$tmp/certs" --workers 2 --hosts 10.77.0.1,10.77.0.2,10.77.0.3 >/dev/null
run=${out:-$tmp/run}
logs=${out:+$out.logs}
logs=${logs:-$tmp/logs}
mkdir -p "$logs"
sets=()
for s in "${extra[@]}"; do sets+=("$s"); done
# The "hosts" share this machine's cores: one worker's share each, as
# `glom train` gives its in-process workers (unless set explicitly).
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}

ip netns exec "$ns_c" "$glom" coordinator --no-eval --certs "$tmp/certs" \
  --listen 10.77.0.1:7400 --workers 2 --out "$run" "${sets[@]}" >"$logs/coordinator.log" 2>&1 &
pids+=($!)
for i in 1 2; do
  ns_var=ns_$i
  ip netns exec "${!ns_var}" "$glom" worker --certs "$tmp/certs" --name "worker-$((i - 1))" \
    --coordinator 10.77.0.1:7400 --listen "10.77.0.$((i + 1)):7401" "${sets[@]}" \
    >"$logs/worker-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
if [ "$status" != 0 ]; then
  echo "the run failed (exit $status); logs:"
  tail -n 5 "$logs"/*.log
  exit 1
fi
python3 - "$run/summary.json" "$delay" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
h = s["halo"]
print(f"netns run, netem delay {sys.argv[2]} ms: {s['steps']} steps on {s['workers']} workers, "
      f"{h['seconds_per_step']:.4f} s/step, halo wait {100 * h['wait_fraction']:.1f}% of a step, "
      f"{h['bytes_per_step']:,.0f} halo bytes/step, {s['images_per_s']:.1f} images/s")
PY
