#!/usr/bin/env bash
# Soak: DURATION (default 10m) of wrk at 64 connections against a gateway
# process, mixing valid, being-revoked and invalid tokens (soak.lua), while
# a revocation is made through a real authority every 100 ms and the
# gateway config is reloaded every 30 s. Reports throughput, p50/p99,
# answers by status, RSS at start and end, and checks nginx's access log
# (the backend) for any revoked token forwarded more than ALLOW_MS after
# its revocation was acknowledged.
#
#   bash benches/wrk/soak.sh                 # DURATION=10m
#   DURATION=60s bash benches/wrk/soak.sh    # a short run
#
# Needs: a release build (built if missing), wrk, nginx, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10m}
ALLOW_MS=${ALLOW_MS:-1000}
export SOAK_DIR=${SOAK_DIR:-/tmp/gatehouse-soak}
BIN=$ROOT/target/release/gatehouse
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
rm -rf "$SOAK_DIR" && mkdir -p "$SOAK_DIR"
cd "$SOAK_DIR"
secs=$(python3 -c "import sys,re; m=re.fullmatch(r'(\d+)(s|m)?', sys.argv[1]); print(int(m[1])*(60 if m[2]=='m' else 1))" "$DURATION")
n_revocations=$((secs * 10 + 100))

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -p "$SOAK_DIR/nginx" -c nginx.conf -s stop 2>/dev/null || true; }
trap cleanup EXIT

echo "== tokens"
"$BIN" token --key "$ROOT/config/dev/rs256.key.pem" --ttl 1h --count 2000 --sub soak-valid > valid.txt
"$BIN" token --key "$ROOT/config/dev/rs256.key.pem" --ttl 1h --count "$n_revocations" --sub soak-doomed > doomed.txt
python3 - <<'PY'
import base64, json
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
v = open("valid.txt").read().split()
bad = []
for t in v[:200]:
    h, p, s = t.split(".")
    bad.append(f"{h}.{p}.{s[:-4]}AAAA")                            # bad signature
    bad.append(f"{b64(json.dumps({'alg':'none'}).encode())}.{p}.")  # alg none
    bad.append(t[: len(t) // 2])                                     # truncated
open("invalid.txt", "w").write("\n".join(bad) + "\n")
with open("doomed-jti.txt", "w") as f:
    for t in open("doomed.txt").read().split():
        p = t.split(".")[1]
        f.write(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["jti"] + "\n")
PY

echo "== backend (nginx logging each forwarded token id)"
mkdir -p nginx/logs
cat > nginx/nginx.conf <<NGX
worker_processes 1;
pid $SOAK_DIR/nginx/nginx.pid;
error_log $SOAK_DIR/nginx/error.log;
events { worker_connections 4096; }
http {
  log_format soak '\$msec \$http_x_token_id';
  access_log $SOAK_DIR/nginx/access.log soak buffer=256k flush=1s;
  server { listen 127.0.0.1:18091; location / { return 200 "ok\n"; } }
}
NGX
nginx -p "$SOAK_DIR/nginx" -c nginx.conf

echo "== authority and gateway"
cp "$ROOT/config/dev/jwks.json" jwks.json
cp "$ROOT/config/dev/admin.token" admin.token
printf 'soak-feed-token-0123456789' > feed.token
cat > authority.yaml <<YAML
issuers:
  - { issuer: https://dev.gatehouse.local, audiences: [demo-app], algorithms: [RS256], jwks: { file: jwks.json }, max_token_lifetime: 1h }
authority: { listen: 127.0.0.1:17491, path: authority.redb, admin_token: { file: admin.token }, feed_token: { file: feed.token } }
logging: { level: warn }
YAML
"$BIN" authority --config authority.yaml > authority.log 2>&1 & pids+=($!)
gateway_yaml() {
  cat > gateway.yaml <<YAML
# reload generation $1
listeners: [{ address: 127.0.0.1:18490 }]
issuers:
  - { issuer: https://dev.gatehouse.local, audiences: [demo-app], algorithms: [RS256], jwks: { file: jwks.json }, max_token_lifetime: 1h }
routes:
  - backends: [http://127.0.0.1:18091]
    identity_headers: [{ claim: jti, header: X-Token-Id }, { claim: sub, header: X-Auth-Subject }]
admin: { listen: 127.0.0.1:19491 }
revocation:
  authority: { url: "http://127.0.0.1:17491", token: { file: feed.token } }
  state_file: gateway.state
logging: { level: "info,gatehouse::access=warn" }
YAML
}
gateway_yaml 0
for _ in $(seq 50); do curl -sf http://127.0.0.1:17491/healthz >/dev/null && break; sleep 0.1; done
"$BIN" run --config gateway.yaml > gateway.log 2>&1 & gw=$!; pids+=($gw)
for _ in $(seq 50); do curl -sf http://127.0.0.1:19491/readyz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$gw/status"; }

echo "== warm-up (10 s)"
wrk -t2 -c64 -d10s -s "$ROOT/benches/wrk/soak.lua" http://127.0.0.1:18490/ > warmup.txt
rss_start=$(rss)

echo "== soak: $DURATION, a revocation every 100 ms, a reload every 30 s"
python3 - "$n_revocations" > revocations.txt <<'PY' & pids+=($!)
import sys, time, json, urllib.request
token = open("admin.token").read().strip()
jtis = open("doomed-jti.txt").read().split()
for jti in jtis[: int(sys.argv[1])]:
    t0 = time.time()
    req = urllib.request.Request("http://127.0.0.1:17491/v1/revocations", method="POST",
        data=json.dumps({"jti": jti, "reason": "soak"}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status in (200, 201):
                print(f"{time.time():.3f} {jti}", flush=True)
    except Exception as e:
        print(f"# failed {jti}: {e}", file=sys.stderr, flush=True)
    time.sleep(max(0.0, 0.1 - (time.time() - t0)))
PY
(
  g=1
  while sleep 30; do
    gateway_yaml "$g"; kill -HUP "$gw"; g=$((g + 1))
  done
) & pids+=($!)
(
  while sleep 10; do echo "$(date +%s) $(rss)"; done
) > rss.txt & pids+=($!)
wrk -t2 -c64 -d"$DURATION" --latency -s "$ROOT/benches/wrk/soak.lua" http://127.0.0.1:18490/ > wrk.txt
rss_end=$(rss)
sleep 2
nginx -p "$SOAK_DIR/nginx" -c nginx.conf -s reopen; sleep 1.5

echo "== results"
grep -E "Requests/sec|Latency|Non-2xx|Socket errors|status counts|p50" wrk.txt || true
reloads=$(grep -c "config reloaded" gateway.log || true)
failed_reloads=$(grep -c "reload refused" gateway.log || true)
echo "revocations acknowledged: $(grep -vc '^#' revocations.txt)"
echo "config reloads logged: $reloads (failed: $failed_reloads)"
echo "RSS: start ${rss_start} KiB, end ${rss_end} KiB"
python3 - "$ALLOW_MS" <<'PY'
import sys
allow = float(sys.argv[1]) / 1000
acked = {}
for l in open("revocations.txt"):
    if l.startswith("#"): continue
    t, jti = l.split()
    acked[jti] = float(t)
late, lags = [], []
for l in open("nginx/access.log"):
    parts = l.split()
    if len(parts) != 2 or parts[1] not in acked: continue
    t, jti = float(parts[0]), parts[1]
    lag = t - acked[jti]
    if lag > 0: lags.append(lag)
    if lag > allow: late.append((jti, lag))
lags.sort()
print(f"revoked tokens forwarded after their revocation was acknowledged: {len(lags)}"
      + (f" (max {lags[-1]*1000:.0f} ms after the 2xx)" if lags else ""))
print(f"forwarded more than {allow*1000:.0f} ms after: {len(late)}")
sys.exit(1 if late else 0)
PY
