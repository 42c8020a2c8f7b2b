# Shared by the wrk scripts: peer-bench material, a gatehouse config for it.
# Needs: a release build, peer-bench's prerequisites (haproxy nginx wrk openssl curl, python3-cryptography).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEER=${PEER_BENCH:-$ROOT/../shared/peer-bench}
export PEER_BENCH_WORK=${PEER_BENCH_WORK:-/tmp/peer-bench}
WORKDIR=${GATEHOUSE_BENCH_WORK:-/tmp/gatehouse-bench}
mkdir -p "$WORKDIR"
BIN=${GATEHOUSE_BIN:-$ROOT/target/release/gatehouse}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
[ -f "$PEER_BENCH_WORK/paths.env" ] || SETUP_ONLY=1 bash "$PEER/run.sh" >/dev/null
# The app behind every proxy: peer-bench's backend nginx (1 worker, 200
# "ok"). Its run.sh renders the config only on a full run, so a fresh
# machine that ran SETUP_ONLY alone has none: render it the same way.
STATE=$PEER_BENCH_WORK/state
if [ ! -s "$STATE/backend-nginx.conf" ]; then
  mkdir -p "$STATE/logs" "$STATE/tmp"
  sed -e "s#@STATE@#$STATE#g" -e "s#@BACKEND_PORT@#18080#g" \
    "$PEER/conf/backend-nginx.conf.in" > "$STATE/backend-nginx.conf"
fi
# shellcheck disable=SC1091
. "$PEER_BENCH_WORK/tokens/claims.env"
TOKENS=$PEER_BENCH_WORK/tokens
KEYS=$PEER_BENCH_WORK/keys

# state_file N -> path of a state file with N revocations (the first 100k are peer-bench's list)
state_file() {
  local n=$1 f=$WORKDIR/state-$1.jsonl
  [ -s "$f" ] || python3 "$ROOT/benches/wrk/make-state.py" "$f" "$n" "$ISS" "$TOKENS/revoked_jti.txt"
  echo "$f"
}

# gw_config N PORT [extra yaml] -> config path: TLS on PORT, RS256+ES256, N revocations loaded from a state file
gw_config() {
  local n=$1 port=$2 extra=${3:-} st cfg=$WORKDIR/gatehouse-$1-$2.yaml
  st=$(state_file "$n")
  cp "$st" "$WORKDIR/live-$n-$port.jsonl"
  cat > "$cfg" <<YAML
listeners:
  - address: 127.0.0.1:$port
    tls:
      certificates: [{ cert: $KEYS/tls-ec.crt.pem, key: $KEYS/tls-ec.key.pem }]
limits:
  max_connections: 20000
issuers:
  - issuer: $ISS
    audiences: [$AUD]
    algorithms: [RS256, ES256]
    jwks: { file: $TOKENS/jwks.json }
    leeway: 0s
    # peer-bench's valid tokens expire in 2100: allow that lifetime here
    # (in production keep it to the issuer's real maximum).
    max_token_lifetime: 80years
routes:
  - backends: [http://127.0.0.1:18080]
revocation:
  # No authority runs in the benchmark: the set comes from the state
  # file and is enforced as is (fail_static).
  authority: { url: "http://127.0.0.1:9" }
  state_file: $WORKDIR/live-$n-$port.jsonl
  max_staleness: 1h
  poll_wait: 25s
$extra
${GW_EXTRA:-}
logging: { level: "${GATEHOUSE_LOG:-warn}" }
YAML
  echo "$cfg"
}
