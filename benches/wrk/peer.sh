#!/usr/bin/env bash
# gatehouse side by side with nginx and HAProxy (../shared/peer-bench) in one
# run, against the same backend: gatehouse over TLS, RS256 and ES256 tokens,
# with N revocations (default 1,000,000; the first 100,000 are the list
# HAProxy gets).
#
#   benches/wrk/peer.sh                       # ONLY=haproxy-t2 RUNS=2 DURATION=10s
#   N=0 ONLY='nginx-w2|haproxy-t2' benches/wrk/peer.sh
#   MISS=1 ONLY='haproxy-t2-tls-jwt-rs256' EXTRA_TOKENS=rs256 benches/wrk/peer.sh
#       the miss path: gatehouse with its verified-token cache off (every
#       request fully verified, as HAProxy's jwt_verify does every time)
. "$(dirname "$0")/common.sh"
N=${N:-1000000}
if [ "${MISS:-0}" = 1 ]; then
  CFG=$(gw_config "$N" 8443 "auth: { token_cache_size: 0 }")
  NAME=gatehouse-miss
else
  CFG=$(gw_config "$N" 8443)
  NAME=gatehouse
fi
export EXTRA_CMD="$BIN run --config $CFG"
export EXTRA_URL=https://127.0.0.1:8443/ EXTRA_NAME=$NAME
export ONLY=${ONLY:-haproxy-t2} RUNS=${RUNS:-2} DURATION=${DURATION:-10s}
bash "$PEER/run.sh"
