#!/usr/bin/env bash
# Bytes per second on the wire (TLS records included) for several batch
# sizes, all agents running side by side for DURATION seconds at a 1 s
# interval, each to its own receiver. tests/README.md, "Choosing the batch size".
set -euo pipefail
DURATION=${DURATION:-60}
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/vigil-batch.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
cargo build --release --locked -q -p vigil-agent -p vigil-tests --bin vigil-agent --bin vigil-bench-receiver
for b in 1 2 5 10 16; do
  d="$work/b$b"; mkdir -p "$d"
  target/release/vigil-agent keygen --state-dir "$d" > "$d/id"
  target/release/vigil-bench-receiver "$(sed -n 's/^key //p' "$d/id")" "$d/port" "$d/pin" "$d/bytes" &
  for _ in $(seq 100); do [ -s "$d/pin" ] && break; sleep 0.05; done
  VIGIL_LOG=warn target/release/vigil-agent run --state-dir "$d" --collector "127.0.0.1:$(cat "$d/port")" \
    --pin "$(cat "$d/pin")" --interval-ms 1000 --batch "$b" &
done
sleep "$DURATION"
echo "| batch | worst-case latency | on the wire |"
echo "|---|---|---|"
for b in 1 2 5 10 16; do
  awk -v b="$b" -v d="$DURATION" -v n="$(cat "$work/b$b/bytes")" 'BEGIN { printf "| %d | %d s | %.0f B/s |\n", b, b, n/d }'
done
