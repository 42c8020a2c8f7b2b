#!/usr/bin/env bash
# How gatehouse scales with cores, on a machine with few: CPU per request
# with 1 and 2 request workers under the same load, interleaved PAIRS
# times. "1 pinned": workers: 1 on core 0 (taskset), wrk and the backend
# on core 1, so gatehouse has one core to itself. "2 shared": workers: 2 on
# both cores, wrk and the backend beside it (as peer.sh runs). Throughput
# is linear in cores while CPU per request stays flat as workers are
# added: shared state that contended would show as more CPU per request.
# TLS, RS256, N revocations, default token cache.
#
#   benches/wrk/cores.sh [N=1000000] [PAIRS=3]
. "$(dirname "$0")/common.sh"
N=${1:-1000000}; PAIRS=${2:-3}
LAST=$(( $(nproc) - 1 ))
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
one() { # workers gatehouse-cpus load-cpus
  local w=$1 gcpu=$2 lcpu=$3 cfg gw ng c0 c1 out reqs
  taskset -c "$lcpu" nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
  ng=$!
  cfg=$(gw_config "$N" 8443 "workers: $w")
  taskset -c "$gcpu" "$BIN" run --config "$cfg" > "$WORKDIR/cores.log" 2>&1 &
  gw=$!
  for _ in $(seq 300); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
  taskset -c "$lcpu" wrk -t2 -c64 -d2s -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/ > /dev/null
  c0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  out=$(taskset -c "$lcpu" wrk -t2 -c64 -d"${DURATION:-8s}" --latency -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/)
  c1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  kill $gw $ng; wait $gw $ng 2>/dev/null
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%s req/s, p99 %s, %s' "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" -v d="${DURATION:-8s}" 'BEGIN{sub(/s$/, "", d); printf "%.1f us CPU/request, %.2f cores busy", c / hz * 1e6 / r, c / hz / d}')"
}
echo "N=$N, wrk -t2 -c64 -d${DURATION:-8s}, $(nproc) cores, $(date -u +%FT%TZ)"
echo "| pair | workers: 1 on core 0 (load on $LAST) | workers: 2 on 0-$LAST (load beside it) |"
echo "|---|---|---|"
for p in $(seq "$PAIRS"); do
  A=$(one 1 0 "$LAST")
  B=$(one 2 "0-$LAST" "0-$LAST")
  echo "| $p | $A | $B |"
done
