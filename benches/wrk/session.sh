#!/usr/bin/env bash
# A browser session against a bearer token, end to end through the gateway
# (TLS, one route with `login`, N revocations, wrk -t2 -c64): the same
# identity sent as `Authorization: Bearer` (a verified-token cache hit) and
# as the session cookie `gatehouse session` seals for it (a session memo
# hit). Rows alternate PAIRS times in one run; CPU per request from
# /proc/<pid>/stat, and the ratio of each session row to the bearer row
# before it.
#
#   benches/wrk/session.sh [N=100000] [PAIRS=3]
. "$(dirname "$0")/common.sh"
N=${1:-100000}; PAIRS=${2:-3}
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
trap 'kill $NG 2>/dev/null; wait $NG 2>/dev/null' EXIT
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
head -c 32 /dev/urandom > "$WORKDIR/session.key"
echo "bench-client-secret-0123456789" > "$WORKDIR/client.secret"
echo "$TOKEN" > "$WORKDIR/id_token"
st=$(state_file "$N")
cp "$st" "$WORKDIR/live-session.jsonl"
CFG=$WORKDIR/gatehouse-session.yaml
cat > "$CFG" <<YAML
listeners:
  - address: 127.0.0.1:8443
    tls:
      certificates: [{ cert: $KEYS/tls-ec.crt.pem, key: $KEYS/tls-ec.key.pem }]
limits: { max_connections: 20000 }
issuers:
  - name: bench
    issuer: $ISS
    audiences: [$AUD]
    algorithms: [RS256, ES256]
    jwks: { file: $TOKENS/jwks.json }
    leeway: 0s
    max_token_lifetime: 80years
sessions:
  keys: [{ file: $WORKDIR/session.key }]
routes:
  - name: app
    backends: [http://127.0.0.1:18080]
    login:
      issuer: bench
      client_id: bench-web
      client_secret: { file: $WORKDIR/client.secret }
      authorization_endpoint: https://127.0.0.1:9/auth
      token_endpoint: https://127.0.0.1:9/token
revocation:
  authority: { url: "http://127.0.0.1:9" }
  state_file: $WORKDIR/live-session.jsonl
  max_staleness: 1h
  poll_wait: 25s
logging: { level: "${GATEHOUSE_LOG:-warn}" }
YAML
COOKIE=$("$BIN" session --config "$CFG" --route app --id-token "$WORKDIR/id_token")
"$BIN" run --config "$CFG" > "$WORKDIR/session.log" 2>&1 &
GW=$!
trap 'kill $GW $NG 2>/dev/null; wait $GW $NG 2>/dev/null' EXIT
for _ in $(seq 300); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
[ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Cookie: $COOKIE" https://127.0.0.1:8443/)" = 200 ] || { echo "the session is refused"; exit 1; }
[ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8443/)" = 200 ] || { echo "the token is refused"; exit 1; }
row() { # label header -> "label req/s p99 cpu_us"
  local c0 c1 out reqs
  wrk -t2 -c64 -d1s -H "$2" https://127.0.0.1:8443/ > /dev/null
  c0=$(awk '{print $14 + $15}' "/proc/$GW/stat")
  out=$(wrk -t2 -c64 -d"${DURATION:-8s}" --latency -H "$2" https://127.0.0.1:8443/)
  c1=$(awk '{print $14 + $15}' "/proc/$GW/stat")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  echo "$1 $(echo "$out" | awk '/Requests\/sec/{print $2}') $(echo "$out" | awk '$1=="99%"{print $2}') $(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", c / hz * 1e6 / r}')"
}
echo "N=$N, cookie ${#COOKIE} bytes, token ${#TOKEN} bytes, wrk -t2 -c64 -d${DURATION:-8s}, $(nproc) cores, $(date -u +%FT%TZ)"
echo "credential | req/s | p99 | CPU us/request | cost vs the bearer row before it (bearer req/s ÷ session req/s, session CPU ÷ bearer CPU)"
for p in $(seq "$PAIRS"); do
  b=$(row bearer "Authorization: Bearer $TOKEN")
  s=$(row session "Cookie: $COOKIE")
  echo "$b" | awk '{printf "bearer | %s | %s | %s |\n", $2, $3, $4}'
  paste -d' ' <(echo "$b") <(echo "$s") | awk '{printf "session | %s | %s | %s | %.3f, %.3f\n", $6, $7, $8, $2 / $6, $8 / $4}'
done
