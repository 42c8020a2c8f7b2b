#!/usr/bin/env bash
# The tail against HAProxy, interleaved: HAProxy 2 threads as a plain TLS
# proxy (peer-bench's config; with one token, and with the 10k-token wrk
# script, which HAProxy ignores but wrk pays for), then each gatehouse binary with one token
# and with 10,000 distinct tokens in rotation (TLS, RS256, N revocations),
# PAIRS times in one run, every row printed. With MISS=1 it adds HAProxy's
# jwt_verify frontend (which verifies every request) and gatehouse with its
# verified-token cache off (every request fully verified) to each pair.
# With EQUAL=1 it adds HAProxy as a plain TLS proxy given gatehouse's
# header work without its token check (wrk sends the token, HAProxy drops
# it and adds the five lines gatehouse sends: X-Forwarded-For/-Proto/-Host,
# Forwarded, X-Auth-Subject), so the backend and wrk do what they do
# behind gatehouse.
# AFFINITY="off auto" runs each gatehouse row with each
# `worker_cpu_affinity` value (default: off only); HAPIN=1 binds HAProxy's
# two threads to the two CPUs too (`cpu-map auto:1/1-2 0-1`), for the
# same comparison with both bound.
# With FLOOR=1 it adds `examples/hyper_floor.rs` (the same Rust stack as
# gatehouse, TLS + hyper server + hyper client pool, with none of its work:
# the floor a hyper-based proxy stands on) to each pair, with the one-token
# wrk command.
# Each row: req/s, p50, p99, and the process's CPU per request from
# /proc/<pid>/stat (user + system, all threads). With SPLIT=1 each row
# also gives the CPU per request of the backend nginx's worker and of wrk
# itself (`/usr/bin/time`): on cores they share, what a proxy makes them
# spend counts against its requests per second too.
#
#   BINS="/tmp/gatehouse-before target/release/gatehouse" benches/wrk/tail.sh [N=1000000] [PAIRS=3]
#   MISS=1 benches/wrk/tail.sh 1000000 3
#   FLOOR=1 benches/wrk/tail.sh 1000000 3
#   EQUAL=1 SPLIT=1 benches/wrk/tail.sh 1000000 3
#   AFFINITY="off auto" [HAPIN=1] benches/wrk/tail.sh 1000000 3
. "$(dirname "$0")/common.sh"
N=${1:-1000000}; PAIRS=${2:-3}
BINS=${BINS:-$BIN}
DUR=${DURATION:-8s}
TOK10K=$WORKDIR/tokens-10k.txt
if [ ! -s "$TOK10K" ]; then
  "$BIN" token --key "$KEYS/rs256.key.pem" --alg rs256 --kid rs256-1 --iss "$ISS" --aud "$AUD" \
    --sub bench-user --ttl 24h --count 10000 > "$TOK10K"
fi
export TOKENS_FILE=$TOK10K
FLOOR_BIN=$ROOT/target/release/examples/hyper_floor
if [ "${FLOOR:-0}" = 1 ] && [ ! -x "$FLOOR_BIN" ]; then
  (cd "$ROOT" && cargo build --release --locked --features bench-floor --example hyper_floor)
fi
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
HA=$WORKDIR/haproxy-tail
mkdir -p "$HA"
sed -e "s#@STATE@#$HA#g" -e "s#@NAME@#haproxy-t2#g" -e "s#@NBTHREAD@#2#g" -e "s#@BACKEND_PORT@#18080#g" \
  -e "s#@PORT_PLAIN@#18220#g" -e "s#@PORT_RS@#18221#g" -e "s#@PORT_ES@#18222#g" \
  -e "s#@PORT_PLAIN_TLS@#18225#g" -e "s#@PORT_RS_TLS@#18226#g" -e "s#@PORT_ES_TLS@#18227#g" \
  -e "s#@TLS_BUNDLE@#$KEYS/tls-ec.bundle.pem#g" -e "s#@KEYS@#$KEYS#g" -e "s#@TOKENS@#$TOKENS#g" \
  -e "s#@ISS@#$ISS#g" -e "s#@AUD@#$AUD#g" "$PEER/conf/haproxy.cfg.in" > "$HA/haproxy.cfg"
if [ "${HAPIN:-0}" = 1 ]; then
  sed -i 's/^    nbthread 2$/    nbthread 2\n    cpu-map auto:1\/1-2 0-1/' "$HA/haproxy.cfg"
fi
cat >> "$HA/haproxy.cfg" <<CFG

frontend plain_gatehouse_headers
    bind 127.0.0.1:18228 backlog 4096 ssl crt $KEYS/tls-ec.bundle.pem alpn http/1.1
    http-request del-header Authorization
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded "for=%[src];proto=https;host=\\"%[req.hdr(host)]\\""
    http-request set-header X-Auth-Subject user-42
    default_backend be
CFG
nginx -c "$PEER_BENCH_WORK/state/backend-nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
NG=$!
haproxy -db -f "$HA/haproxy.cfg" > "$HA/haproxy.log" 2>&1 &
HP=$!
trap 'kill $NG $HP 2>/dev/null; wait $NG $HP 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:18225/ && break; sleep 0.1; done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
NGW=
if [ "${SPLIT:-0}" = 1 ]; then
  for _ in $(seq 50); do NGW=$(pgrep -P "$NG" | head -1 || true); [ -n "$NGW" ] && break; sleep 0.1; done
fi
# measure PID URL [wrk args...] -> "req/s | p50 | p99 | CPU/request" (SPLIT=1: "| nginx | wrk" too)
measure() {
  local pid=$1 url=$2 c0 c1 n0=0 n1=0 out reqs split=""; shift 2
  wrk -t2 -c64 -d2s "$@" "$url" > /dev/null
  c0=$(ticks "$pid")
  [ -n "$NGW" ] && n0=$(ticks "$NGW")
  out=$(/usr/bin/time -f "wrk-cpu %U %S" wrk -t2 -c64 -d"$DUR" --latency "$@" "$url" 2>&1)
  c1=$(ticks "$pid")
  [ -n "$NGW" ] && n1=$(ticks "$NGW")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx answers: $(echo "$out" | grep Non-2xx)" >&2; fi
  if [ -n "$NGW" ]; then
    split=$(echo "$out" | awk -v n=$((n1 - n0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" \
      '/^wrk-cpu/{printf " | %.2f us | %.2f us", n / hz * 1e6 / r, ($2 + $3) * 1e6 / r}')
  fi
  printf '%s | %s | %s | %s%s' "$(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')" \
    "$(echo "$out" | awk '$1=="50%"{print $2}')" "$(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f us", c / hz * 1e6 / r}')" "$split"
}
# gatehouse BIN CACHE_SIZE ROW-NAME [wrk args...], once per AFFINITY value
gatehouse() {
  local bin=$1 size=$2 name=$3 cfg gw a label; shift 3
  for a in ${AFFINITY:-off}; do
    cfg=$(gw_config "$N" 8443 "auth: { token_cache_size: $size }
worker_cpu_affinity: $a")
    label=$name
    [ "$a" = auto ] && label="$name, workers bound"
    "$bin" run --config "$cfg" > "$WORKDIR/tail.log" 2>&1 &
    gw=$!
    for _ in $(seq 300); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
    echo "| $p | $label ($(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")) | $(measure "$gw" https://127.0.0.1:8443/ "$@") |"
    kill $gw; wait $gw 2>/dev/null
  done
}
echo "N=$N, wrk -t2 -c64 -d$DUR, $(nproc) cores, $(date -u +%FT%TZ), $(haproxy -v | head -1 | awk '{print $1, $3}')"
if [ -n "$NGW" ]; then
  echo "| pair | row | req/s | p50 | p99 | CPU/request | nginx CPU/request | wrk CPU/request |"
  echo "|---|---|---|---|---|---|---|---|"
else
  echo "| pair | row | req/s | p50 | p99 | CPU/request |"
  echo "|---|---|---|---|---|---|"
fi
for p in $(seq "$PAIRS"); do
  echo "| $p | HAProxy plain TLS | $(measure "$HP" https://127.0.0.1:18225/) |"
  # The same wrk script as the 10k-token rows: its Lua per request costs
  # wrk CPU on the cores the proxy shares, so the 10k rows compare to this.
  echo "| $p | HAProxy plain TLS, 10k tokens | $(measure "$HP" https://127.0.0.1:18225/ -s "$ROOT/benches/wrk/rotate.lua") |"
  if [ "${EQUAL:-0}" = 1 ]; then
    echo "| $p | HAProxy plain TLS, gatehouse's header work, one token | $(measure "$HP" https://127.0.0.1:18228/ -H "Authorization: Bearer $TOKEN") |"
    echo "| $p | HAProxy plain TLS, gatehouse's header work, 10k tokens | $(measure "$HP" https://127.0.0.1:18228/ -s "$ROOT/benches/wrk/rotate.lua") |"
  fi
  if [ "${FLOOR:-0}" = 1 ]; then
    "$FLOOR_BIN" 127.0.0.1:8444 127.0.0.1:18080 "$KEYS/tls-ec.crt.pem" "$KEYS/tls-ec.key.pem" &
    fl=$!
    for _ in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:8444/ && break; sleep 0.1; done
    echo "| $p | hyper floor (no gatehouse work), one token | $(measure "$fl" https://127.0.0.1:8444/ -H "Authorization: Bearer $TOKEN") |"
    kill $fl; wait $fl 2>/dev/null || true
  fi
  for b in $BINS; do
    gatehouse "$b" 100000 "gatehouse, one token" -H "Authorization: Bearer $TOKEN"
    gatehouse "$b" 100000 "gatehouse, 10k tokens" -s "$ROOT/benches/wrk/rotate.lua"
  done
  if [ "${MISS:-0}" = 1 ]; then
    echo "| $p | HAProxy jwt_verify RS256 TLS | $(measure "$HP" https://127.0.0.1:18226/ -H "Authorization: Bearer $TOKEN") |"
    for b in $BINS; do
      gatehouse "$b" 0 "gatehouse, cache off" -H "Authorization: Bearer $TOKEN"
    done
  fi
done
