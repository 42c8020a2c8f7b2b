#!/usr/bin/env bash
# Target 6 of the performance issue: N (default 10,000) idle keep-alive TLS
# connections held open; the gateway's RSS per connection.
. "$(dirname "$0")/common.sh"
N=${N:-10000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
CFG=$(gw_config 0 8443 "${IDLE_EXTRA:-}")
"$BIN" run --config "$CFG" > "$WORKDIR/idle.log" 2>&1 &
GW=$!
trap 'kill $GW $NG 2>/dev/null; wait $GW $NG 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
python3 "$ROOT/benches/wrk/idle.py" "$GW" 127.0.0.1 8443 "$N" "$TOKENS/rs256.valid.jwt"
