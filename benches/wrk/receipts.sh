#!/usr/bin/env bash
# Does a waited revocation cost the request path anything? wrk on a
# gateway with an embedded authority (TLS, RS256, N revocations loaded),
# alternating runs with a health check and with a waited revocation every
# 100 ms (`POST /v1/revocations?wait=applied`), PAIRS pairs, same process.
#
#   benches/wrk/receipts.sh [N=1000000] [PAIRS=3]
. "$(dirname "$0")/common.sh"
N=${1:-1000000}; PAIRS=${2:-3}; PORT=8443; APORT=17400
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
printf 'bench-admin-token-0123456789' > "$WORKDIR/admin.token"
rm -f "$WORKDIR/receipts.redb"
CFG=$(gw_config "$N" "$PORT")
# Swap the unreachable authority for an embedded one in the same process.
python3 - "$CFG" "$WORKDIR" "$APORT" <<'PY'
import sys
cfg, work, port = sys.argv[1:]
s = open(cfg).read()
s = s.replace('  authority: { url: "http://127.0.0.1:9" }\n',
  f'  name: bench-gw\n  embedded:\n    listen: 127.0.0.1:{port}\n    path: {work}/receipts.redb\n    admin_token: {{ file: {work}/admin.token }}\n')
open(cfg, 'w').write(s)
PY
"$BIN" run --config "$CFG" > "$WORKDIR/receipts.log" 2>&1 &
GW=$!
trap 'kill $GW $NG 2>/dev/null; wait $GW $NG 2>/dev/null' EXIT
for _ in $(seq 300); do curl -sk -o /dev/null https://127.0.0.1:$PORT/ && break; sleep 0.1; done
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
H="Authorization: Bearer $(cat "$WORKDIR/admin.token")"
# Both runs of a pair have the same client beside wrk, one call every
# 100 ms: an authority health check in the baseline, a waited revocation
# in the other, so the difference is what the revocation costs.
caller() {
  local kind=$1 i=0
  while :; do
    if [ "$kind" = revoke ]; then
      curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST -H "$H" \
        "http://127.0.0.1:$APORT/v1/revocations?wait=applied&timeout=2s" \
        -d "{\"jti\": \"bench-wait-$(date +%s%N)\"}" >> "$WORKDIR/receipts-calls.txt"
    else
      curl -s -o /dev/null "http://127.0.0.1:$APORT/healthz"
    fi
    i=$((i + 1)); sleep 0.1
  done
}
run() {
  wrk -t2 -c64 -d"${DURATION:-10s}" --latency -H "Authorization: Bearer $TOKEN" https://127.0.0.1:$PORT/ \
    | awk '/Requests\/sec/{r=$2} /  99%/{p=$2} END{printf "%s req/s, p99 %s", r, p}'
}
: > "$WORKDIR/receipts-calls.txt"
echo "| pair | health check every 100 ms | waited revocation every 100 ms | ratio |"
echo "|---|---|---|---|"
for p in $(seq "$PAIRS"); do
  caller health & C=$!
  A=$(run)
  kill $C; wait $C 2>/dev/null || true
  caller revoke & C=$!
  B=$(run)
  kill $C; wait $C 2>/dev/null || true
  echo "| $p | $A | $B | $(awk -v a="${A%% *}" -v b="${B%% *}" 'BEGIN{printf "%.3f", b / a}') |"
done
n=$(wc -l < "$WORKDIR/receipts-calls.txt"); ok=$(grep -c '^201 ' "$WORKDIR/receipts-calls.txt" || true)
sort -k2 -n "$WORKDIR/receipts-calls.txt" | awk -v n="$n" -v ok="$ok" '{t[NR]=$2} END{printf "waited revocations: %d, 201 complete: %d, answer p50 %.1f ms, p99 %.1f ms\n", n, ok, t[int(n*0.5)]*1000, t[int(n*0.99)]*1000}'
