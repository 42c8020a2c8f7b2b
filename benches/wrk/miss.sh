#!/usr/bin/env bash
# The miss path: every request fully verified (`auth.token_cache_size: 0`,
# a login storm or a fleet of short-lived tokens) against the cached path,
# TLS, RS256, N revocations, wrk -t2 -c64; CPU per request from
# /proc/<pid>/stat. With several binaries (BINS="old new"), the rows are
# interleaved binary by binary, PAIRS times, in one run.
#
#   BINS="/tmp/gatehouse-before target/release/gatehouse" benches/wrk/miss.sh [N=1000000] [PAIRS=3]
. "$(dirname "$0")/common.sh"
N=${1:-1000000}; PAIRS=${2:-3}
BINS=${BINS:-$BIN}
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
trap 'kill $NG 2>/dev/null; wait $NG 2>/dev/null' EXIT
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
one() { # binary cache_size -> one row
  local bin=$1 size=$2 cfg gw c0 c1 out reqs
  cfg=$(gw_config "$N" 8443 "auth: { token_cache_size: $size }")
  "$bin" run --config "$cfg" > "$WORKDIR/miss.log" 2>&1 &
  gw=$!
  for _ in $(seq 300); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
  wrk -t2 -c64 -d2s -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/ > /dev/null
  c0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  out=$(wrk -t2 -c64 -d"${DURATION:-8s}" --latency -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/)
  c1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  kill $gw; wait $gw 2>/dev/null
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%s | %s | %s req/s | p99 %s | %s\n' "$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")" \
    "$([ "$size" = 0 ] && echo miss || echo hit)" \
    "$(echo "$out" | awk '/Requests\/sec/{print $2}')" "$(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f us CPU/request", c / hz * 1e6 / r}')"
}
echo "N=$N, wrk -t2 -c64 -d${DURATION:-8s}, $(nproc) cores, $(date -u +%FT%TZ)"
for p in $(seq "$PAIRS"); do
  for b in $BINS; do
    one "$b" 0
    one "$b" 100000
  done
done
