#!/usr/bin/env bash
# Quick gatehouse-only wrk runs against peer-bench's backend, for profiling
# and A/B comparisons (the backend and gatehouse are started and stopped here).
#
#   benches/wrk/quick.sh N [extra-yaml] [wrk-args...]
. "$(dirname "$0")/common.sh"
N=${1:-0}; EXTRA=${2:-}; shift 2 || shift $#
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
CFG=$(gw_config "$N" 8443 "$EXTRA")
"$BIN" run --config "$CFG" > "$WORKDIR/quick.log" 2>&1 &
GW=$!
trap 'kill $GW $NG 2>/dev/null; wait $GW $NG 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
# CPU time of the gateway process (utime + stime, clock ticks)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW/stat"; }
C0=$(cpu_ticks)
OUT=$(wrk -t2 -c64 -d"${DURATION:-5s}" --latency -H "Authorization: Bearer $TOKEN" "$@" https://127.0.0.1:8443/)
C1=$(cpu_ticks)
echo "$OUT" | grep -E "Requests/sec|99%|50%|Non-2xx|Socket"
# Gateway CPU per request: steadier than req/s on a machine whose cores
# wrk and the backend share (what one request costs, not who won the CPU).
REQS=$(echo "$OUT" | awk '/requests in/{print $1}')
echo "gatehouse CPU per request: $(awk -v c=$((C1 - C0)) -v r="$REQS" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f us", c / hz * 1e6 / r}')"
echo "gatehouse RSS: $(awk '/VmRSS/{print $2" "$3}' /proc/$GW/status)"
