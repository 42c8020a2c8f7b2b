#!/usr/bin/env bash
# gatehouse side by side with nginx and HAProxy (../shared/peer-bench) in one
# run, against the same backend: gatehouse over TLS, RS256 and ES256 tokens,
# with N revocations (default 1,000,000; the first 100,000 are the list
# HAProxy gets).
#
#   benches/wrk/peer.sh                       # ONLY=haproxy-t2 RUNS=2 DURATION=10s
#   N=0 ONLY='nginx-w2|haproxy-t2' benches/wrk/peer.sh
. "$(dirname "$0")/common.sh"
N=${N:-1000000}
CFG=$(gw_config "$N" 8443)
export EXTRA_CMD="$BIN run --config $CFG"
export EXTRA_URL=https://127.0.0.1:8443/ EXTRA_NAME=gatehouse
export ONLY=${ONLY:-haproxy-t2} RUNS=${RUNS:-2} DURATION=${DURATION:-10s}
bash "$PEER/run.sh"
