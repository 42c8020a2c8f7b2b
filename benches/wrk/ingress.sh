#!/usr/bin/env bash
# gatehouse beside an existing ingress (README "Beside an existing ingress"),
# measured in one run, rows interleaved RUNS times, plain HTTP on loopback:
#   nginx            nginx proxies to the app
#   nginx+200        nginx auth_request to an upstream that always answers 200
#                    (the cost of the extra hop itself)
#   nginx+gatehouse  nginx auth_request to gatehouse's auth_server listener
#                    (RS256 token, N revocations loaded)
#   gatehouse proxy  gatehouse proxying to the app itself (for its CPU per
#                    proxied request, against its CPU per decision above)
#   nginx+200 unix, nginx+gatehouse unix
#                    the same two hops over a Unix domain socket (an
#                    ingress on the same host: README "Beside an existing
#                    ingress")
# The app is an nginx answering 200 "ok"; each nginx (front, app, the
# always-200 upstream) has one worker, gatehouse its default workers. Needs: release build, nginx, wrk,
# peer-bench's tokens (SETUP_ONLY=1 ../shared/peer-bench/run.sh is run for you).
#
#   benches/wrk/ingress.sh [N=1000000]      DURATION=10s RUNS=3 [WORKERS=n]
# WORKERS sets gatehouse's `workers` (default: one per core).
. "$(dirname "$0")/common.sh"
N=${1:-1000000}
RUNS=${RUNS:-3}
W=$WORKDIR/ingress
mkdir -p "$W"
# A run stopped by a signal leaves its sockets behind, and nginx then
# cannot bind them (the always-200 rows would measure 502s).
rm -f "$W/ok.sock" "$W/auth.sock" "$W"/*.err
ST=$(state_file "$N")
cp "$ST" "$W/live.jsonl"
cat > "$W/app.conf" <<EOF
pid $W/app.pid; error_log $W/app.err warn; worker_processes 1;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } }
}
EOF
# The always-200 upstream is its own nginx process, as gatehouse is.
cat > "$W/ok.conf" <<EOF
pid $W/ok.pid; error_log $W/ok.err warn; worker_processes 1;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18090; listen unix:$W/ok.sock; location / { return 200; } }
}
EOF
cat > "$W/front.conf" <<EOF
user root;
pid $W/front.pid; error_log $W/front.err warn; worker_processes 1;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:18080; keepalive 64; }
  upstream ok { server 127.0.0.1:18090; keepalive 64; }
  upstream gatehouse { server 127.0.0.1:19180; keepalive 64; }
  upstream ok_unix { server unix:$W/ok.sock; keepalive 64; }
  upstream gatehouse_unix { server unix:$W/auth.sock; keepalive 64; }
  server { listen 127.0.0.1:18001;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18002;
    location / { auth_request /_ok; proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_ok { internal; proxy_pass http://ok/ok; proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18003;
    location / { auth_request /_gatehouse;
      auth_request_set \$gh_subject \$upstream_http_x_auth_subject;
      proxy_set_header X-Auth-Subject \$gh_subject;
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_gatehouse { internal; proxy_pass http://gatehouse; proxy_pass_request_body off;
      proxy_set_header Content-Length ""; proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method; proxy_set_header Host \$host;
      proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18004;
    location / { auth_request /_ok; proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_ok { internal; proxy_pass http://ok_unix/ok; proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18005;
    location / { auth_request /_gatehouse;
      auth_request_set \$gh_subject \$upstream_http_x_auth_subject;
      proxy_set_header X-Auth-Subject \$gh_subject;
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_gatehouse { internal; proxy_pass http://gatehouse_unix; proxy_pass_request_body off;
      proxy_set_header Content-Length ""; proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method; proxy_set_header Host \$host;
      proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
cat > "$W/gatehouse.yaml" <<YAML
listeners:
  - name: auth
    address: 127.0.0.1:19180
    auth_server: { ingress: nginx }
  - name: proxy
    address: 127.0.0.1:19181
  # The front nginx's workers run as root here (user root, below); a real
  # setup gives nginx's user the socket's group.
  - name: auth-unix
    address: unix:$W/auth.sock
    socket_mode: "0660"
    auth_server: { ingress: nginx }
trusted_proxies: [127.0.0.1/32]
limits: { max_connections: 20000 }
${WORKERS:+workers: $WORKERS}
issuers:
  - issuer: $ISS
    audiences: [$AUD]
    algorithms: [RS256, ES256]
    jwks: { file: $TOKENS/jwks.json }
    leeway: 0s
    max_token_lifetime: 80years
routes:
  - backends: [http://127.0.0.1:18080]
revocation:
  authority: { url: "http://127.0.0.1:9" }
  state_file: $W/live.jsonl
  max_staleness: 1h
  poll_wait: 25s
logging: { level: warn }
YAML
nginx -c "$W/app.conf" -g 'daemon off;' >/dev/null 2>&1 &
APP=$!
nginx -c "$W/ok.conf" -g 'daemon off;' >/dev/null 2>&1 &
OK=$!
nginx -c "$W/front.conf" -g 'daemon off;' >/dev/null 2>&1 &
FRONT=$!
"$BIN" run --config "$W/gatehouse.yaml" > "$W/gatehouse.log" 2>&1 &
GW=$!
trap 'kill $GW $FRONT $OK $APP 2>/dev/null; wait $GW $FRONT $OK $APP 2>/dev/null' EXIT
# Both listeners: the socket may appear a moment after the TCP port.
for _ in $(seq 300); do [ -S "$W/auth.sock" ] && curl -s -o /dev/null http://127.0.0.1:19181/ && break; sleep 0.1; done
TOKEN=$(cat "$TOKENS/rs256.valid.jwt")
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18003/)
[ "$code" = 200 ] || { echo "nginx+gatehouse answered $code for a valid token"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18003/)
[ "$code" = 401 ] || { echo "nginx+gatehouse answered $code without a token"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18005/)
[ "$code" = 200 ] || { echo "nginx+gatehouse over the unix socket answered $code for a valid token"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18005/)
[ "$code" = 401 ] || { echo "nginx+gatehouse over the unix socket answered $code without a token"; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW/stat"; }
row() { # name url
  local c0 c1 out reqs
  c0=$(cpu_ticks)
  out=$(wrk -t2 -c64 -d"${DURATION:-10s}" --latency -H "Authorization: Bearer $TOKEN" "$2")
  c1=$(cpu_ticks)
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%-16s %10s req/s  p50 %8s  p99 %8s  non-2xx %s  gatehouse CPU/request %s\n' "$1" \
    "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(echo "$out" | awk '$1=="50%"{print $2}')" "$(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $5}' | grep . || echo 0)" \
    "$(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f us", c / hz * 1e6 / r}')"
}
echo "N=$N revocations, wrk -t2 -c64 -d${DURATION:-10s}, RUNS=$RUNS, gatehouse workers ${WORKERS:-default}, $(nproc) cores, $(date -u +%FT%TZ)"
for i in $(seq "$RUNS"); do
  echo "-- run $i"
  row nginx http://127.0.0.1:18001/
  row nginx+200 http://127.0.0.1:18002/
  row nginx+gatehouse http://127.0.0.1:18003/
  row "gatehouse proxy" http://127.0.0.1:19181/
  row "nginx+200 unix" http://127.0.0.1:18004/
  row "nginx+gh unix" http://127.0.0.1:18005/
done
