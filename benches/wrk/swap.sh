#!/usr/bin/env bash
# Target 4 of the performance issue: a fresh 1M-entry snapshot applied
# while the gateway is under load. The gateway starts from a 1M-entry state
# file with the authority down and serves under wrk; after a few seconds
# an authority holding another 1M entries (a different store, so the
# gateway's cursor is foreign and it must take a snapshot) comes up. The
# run's p99 and error count are compared with a steady run.
. "$(dirname "$0")/common.sh"
N=${N:-1000000}
PORT=17499
ADMIN=swap-bench-admin-token-0123456789
AUTH_DIR=$WORKDIR/swap-authority
mkdir -p "$AUTH_DIR"
printf '%s' "$ADMIN" > "$AUTH_DIR/admin.token"
printf '%s' "swap-bench-feed-token-0123456789" > "$AUTH_DIR/feed.token"
cat > "$AUTH_DIR/authority.yaml" <<YAML
issuers:
  - issuer: $ISS
    audiences: [$AUD]
    algorithms: [RS256]
    jwks: { file: $TOKENS/jwks.json }
authority:
  listen: 127.0.0.1:$PORT
  path: $AUTH_DIR/store.redb
  admin_token: { file: admin.token }
  feed_token: { file: feed.token }
  change_retention: 1000
logging: { level: warn }
YAML
if [ ! -s "$AUTH_DIR/store.redb" ] || [ "$(cat "$AUTH_DIR/loaded" 2>/dev/null)" != "$N" ]; then
  rm -f "$AUTH_DIR/store.redb"
  "$BIN" authority --config "$AUTH_DIR/authority.yaml" & AP=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
  start=$(date +%s.%N)
  python3 - "$N" "$PORT" "$ADMIN" <<'PY'
import json, sys, urllib.request, uuid
n, port, admin = int(sys.argv[1]), sys.argv[2], sys.argv[3]
batch = 50000
for b in range(0, n, batch):
    body = json.dumps([{"jti": str(uuid.uuid4()), "reason": "logout"} for _ in range(min(batch, n - b))]).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/revocations", data=body,
                                 headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
PY
  echo "loaded $N revocations into the authority in $(echo "$(date +%s.%N) - $start" | bc) s (batches of 50,000, each one fsync'd transaction)"
  kill $AP; wait $AP 2>/dev/null
  echo "$N" > "$AUTH_DIR/loaded"
fi

# an authority left over from an interrupted run would serve the snapshot early
pkill -f "authority --config $AUTH_DIR/authority.yaml" || true
while pgrep -f "authority --config $AUTH_DIR/authority.yaml" >/dev/null; do sleep 0.2; done
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 & NG=$!
CFG=$(GATEHOUSE_LOG="warn,gatehouse_gateway::revocation=info" gw_config "$N" 8443)
sed -i "s|authority: { url: \"http://127.0.0.1:9\" }|authority: { url: \"http://127.0.0.1:$PORT\", token: { file: $AUTH_DIR/feed.token } }|" "$CFG"
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
run_gw() { "$BIN" run --config "$CFG" > "$WORKDIR/swap-gw.log" 2>&1 & GW=$!
  for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done; }
trap 'kill $GW $NG $AP 2>/dev/null' EXIT

run_gw
echo "steady (state file only, authority down):"
wrk -t2 -c64 -d"${DURATION:-25s}" --latency -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/ | grep -E "Requests/sec|50%|99%|Non-2xx|Socket"
kill $GW; wait $GW 2>/dev/null
cp "$(state_file "$N")" "$WORKDIR/live-$N-8443.jsonl"

run_gw
echo "with a 1M snapshot arriving 4 s into the run (wrk started $(date -u +%T)):"
(sleep 4; "$BIN" authority --config "$AUTH_DIR/authority.yaml" > "$WORKDIR/swap-authority.log" 2>&1) & AP=$!
wrk -t2 -c64 -d"${DURATION:-25s}" --latency -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/ | grep -E "Requests/sec|50%|99%|Non-2xx|Socket"
grep -E "snapshot" "$WORKDIR/swap-gw.log" | tail -1
pkill -f "authority --config $AUTH_DIR/authority.yaml"
# wait for it to close its store (the next run opens it again)
while pgrep -f "authority --config $AUTH_DIR/authority.yaml" >/dev/null; do sleep 0.2; done
