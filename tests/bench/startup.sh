#!/usr/bin/env bash
# Start-up benchmark (tests/README.md, "Start-up"): time from spawning `vigil-agent
# run` to its first signed frame arriving, verified, at a TLS 1.3 receiver on
# loopback, for the static x86_64 agent and the static aarch64 agent under
# qemu-aarch64 (user-mode emulation: an upper bound, not a device figure).
# ROUNDS rounds of RUNS starts each, alternating; one line per round.
# Needs the static builds: cargo run -p xtask -- dist --only agent
set -euo pipefail
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-30}
cd "$(dirname "$0")/../.."
dist=${DIST:-target/dist}
cargo build --release --locked -q -p vigil-tests --bin vigil-startup
for round in $(seq "$ROUNDS"); do
  printf 'round %s x86_64 static      ' "$round"
  target/release/vigil-startup "$RUNS" "$dist/vigil-agent-x86_64-unknown-linux-musl"
  printf 'round %s aarch64 under qemu ' "$round"
  target/release/vigil-startup "$RUNS" qemu-aarch64 "$dist/vigil-agent-aarch64-unknown-linux-musl"
done
