#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each) and prints
# executions and findings. Needs cargo-fuzz (`cargo install cargo-fuzz`).
# Works on the stable toolchain without sanitizers (`-s none`).
set -uo pipefail
cd "$(dirname "$0")"
SECS=${SECS:-60}
for t in token config path feed wait cookie keep_alive head; do
  mkdir -p "corpus/$t"
  out=$(RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=16384 2>&1)
  code=$?
  runs=$(grep -oE '#[0-9]+[[:space:]]+DONE' <<<"$out" | grep -oE '[0-9]+' | tail -1)
  echo "$t: exit $code, ${runs:-?} executions in ${SECS}s, findings: $(ls artifacts/$t 2>/dev/null | wc -l)"
done
