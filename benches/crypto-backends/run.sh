#!/usr/bin/env bash
# Builds this comparison twice and runs each build twice:
#   aws-lc-rs for jsonwebtoken and rustls (what gatehouse uses), and
#   jsonwebtoken's rust_crypto backend with rustls on ring.
set -euo pipefail
cd "$(dirname "$0")"
CARGO_TARGET_DIR=target/awslc cargo build --release --features awslc
CARGO_TARGET_DIR=target/ring cargo build --release --features ringrc
for r in 1 2; do
  echo "== run $r: aws-lc-rs"; target/awslc/release/crypto-backends
  echo "== run $r: rust_crypto (JWT) + ring (TLS)"; target/ring/release/crypto-backends
done
