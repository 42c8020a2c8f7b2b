#!/usr/bin/env bash
# Target 3 and 5 of the performance issue: gatehouse over TLS, RS256, with
# 0, 10k and 1M revocations, first with one token repeated, then with
# 10,000 distinct valid tokens in rotation (wrk Lua); gateway RSS after each.
# Each row is measured RUNS times, the sizes interleaved (so a drift of the
# machine during the run does not look like an effect of size); the table
# gives the best req/s with its latencies and the lowest gateway CPU per
# request, which is the steadier figure on a shared 2-core machine.
#
#   benches/wrk/revocations.sh            # DURATION=10s RUNS=2
#   SIZES="1000000 0" RUNS=3 benches/wrk/revocations.sh
. "$(dirname "$0")/common.sh"
TOK10K=$WORKDIR/tokens-10k.txt
if [ ! -s "$TOK10K" ]; then
  "$BIN" token --key "$KEYS/rs256.key.pem" --alg rs256 --kid rs256-1 --iss "$ISS" --aud "$AUD" \
    --sub bench-user --ttl 24h --count 10000 > "$TOK10K"
fi
SIZES=${SIZES:-0 10000 1000000}
declare -A best cpu row
for r in $(seq "${RUNS:-2}"); do
  for n in $SIZES; do
    for mode in one rotate10k; do
      if [ "$mode" = one ]; then args=(); else args=(-s "$ROOT/benches/wrk/rotate.lua"); fi
      out=$(TOKENS_FILE=$TOK10K DURATION=${DURATION:-10s} bash "$ROOT/benches/wrk/quick.sh" "$n" "" "${args[@]}" 2>&1)
      rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
      p50=$(awk '$1=="50%"{print $2}' <<<"$out")
      p99=$(awk '$1=="99%"{print $2}' <<<"$out")
      rss=$(awk -F': ' '/gatehouse RSS/{print $2}' <<<"$out")
      us=$(awk '/CPU per request/{print $5}' <<<"$out")
      k="$n/$mode"
      echo "run $r: $k $rps req/s p99 $p99 cpu/req $us us" >&2
      if [ -z "${best[$k]:-}" ] || awk -v a="$rps" -v b="${best[$k]}" 'BEGIN{exit !(a > b)}'; then
        best[$k]=$rps; row[$k]="$p50 $p99 $rss"
      fi
      if [ -z "${cpu[$k]:-}" ] || awk -v a="$us" -v b="${cpu[$k]}" 'BEGIN{exit !(a < b)}'; then
        cpu[$k]=$us
      fi
    done
  done
done
printf '%-12s %-10s %10s %9s %9s %10s %12s\n' revocations tokens req/s p50 p99 cpu/req rss
for n in $SIZES; do
  for mode in one rotate10k; do
    k="$n/$mode"
    read -r p50 p99 rss rssu <<<"${row[$k]}"
    printf '%-12s %-10s %10s %9s %9s %8sus %9s %s\n' "$n" "$mode" "${best[$k]}" "$p50" "$p99" "${cpu[$k]}" "$rss" "$rssu"
  done
done
