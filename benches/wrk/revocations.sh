#!/usr/bin/env bash
# Target 3 and 5 of the performance issue: gatehouse over TLS, RS256, with
# 0, 10k and 1M revocations, first with one token repeated, then with
# 10,000 distinct valid tokens in rotation (wrk Lua); gateway RSS after each.
#
#   benches/wrk/revocations.sh            # DURATION=10s each
. "$(dirname "$0")/common.sh"
TOK10K=$WORKDIR/tokens-10k.txt
if [ ! -s "$TOK10K" ]; then
  "$BIN" token --key "$KEYS/rs256.key.pem" --alg rs256 --kid rs256-1 --iss "$ISS" --aud "$AUD" \
    --sub bench-user --ttl 24h --count 10000 > "$TOK10K"
fi
printf '%-12s %-14s %10s %9s %9s %12s\n' revocations tokens req/s p50 p99 rss
for n in 0 10000 1000000; do
  for mode in one rotate10k; do
    if [ "$mode" = one ]; then args=(); else args=(-s "$ROOT/benches/wrk/rotate.lua"); fi
    out=$(TOKENS_FILE=$TOK10K DURATION=${DURATION:-10s} bash "$ROOT/benches/wrk/quick.sh" "$n" "" "${args[@]}" 2>&1)
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    rss=$(awk -F': ' '/gatehouse RSS/{print $2}' <<<"$out")
    printf '%-12s %-14s %10s %9s %9s %12s\n' "$n" "$mode" "$rps" "$p50" "$p99" "$rss"
  done
done
