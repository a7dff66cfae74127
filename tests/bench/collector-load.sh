#!/usr/bin/env bash
# Collector ingest benchmark (tests/README.md, "Collector throughput"): in one run on
# this machine, the release vigil-collector with DEVICES enrolled simulated
# devices (tests/src/bin/vigil-loadgen.rs: real keys, real signed frames,
# one TLS 1.3 connection each), measured
#   1. unpaced: frames/s verified and durably stored (acks counted), ack
#      latency p50/p99, collector RSS;
#   2. paced at RATE frames/s: ack latency p50/p99, with the devices' send
#      times spread evenly over their period (independent devices), and
#      again with all of them sending in the same instant (the worst case);
#   3. the machine's raw ed25519 verify rates (single, strict, batch of 64)
#      as the ceiling.
#   4. unpaced again with every device monitored against an approved
#      (fleet) baseline, so the metric and change detectors run on every
#      sample, against run 1 (detectors that need no baseline only).
# Prints a Markdown table.
set -euo pipefail
DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-15}
RATE=${RATE:-10000}
cd "$(dirname "$0")/../.."
cargo build --release --locked -q -p vigil-collector
cargo build --release --locked -q -p vigil-tests --bin vigil-loadgen
C=target/release/vigil-collector
L=target/release/vigil-loadgen
work=$(mktemp -d /tmp/vigil-load.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT

serve_bg() { # state-dir: starts serve, sets pid, addr, pin
  "$C" serve --state-dir "$1" --listen 127.0.0.1:0 --max-connections $((DEVICES + 100)) \
    --frames-per-s 100000 > "$1/out" 2> "$1/log" &
  pid=$!
  while ! grep -q '^ready' "$1/out" 2>/dev/null; do sleep 0.1; done
  addr=$(sed -n 's/^listening tls //p' "$1/out")
  pin=$(sed -n 's/^pin_sha256 = "\(.*\)"/\1/p' "$1/out")
}

# A fleet baseline for model "sim", learned from one warm-up device's
# samples (the load generator's), so every device of the model is
# monitored from its first frame.
fleet_baseline() { # state-dir
  local st=$1 k
  k=$("$L" keys 1 99)
  "$C" enroll --state-dir "$st" --key "$k" --name warm >/dev/null
  serve_bg "$st"
  "$L" run --address "$addr" --pin "$pin" --devices 1 --seed 99 --rate 0 --duration-s 3 > /dev/null
  kill -TERM $pid; wait $pid
  "$C" baseline close --state-dir "$st" warm >/dev/null
  "$C" baseline approve --state-dir "$st" warm >/dev/null
  "$C" baseline export --state-dir "$st" warm > "$st/fleet.json"
  "$C" baseline import --state-dir "$st" --model sim "$st/fleet.json" >/dev/null
}

run_once() { # name seed rate [phase] [detect]
  local name=$1 seed=$2 rate=$3 phase=${4:-spread} detect=${5:-} st="$work/$1"
  mkdir -p "$st"
  local model=()
  if [ -n "$detect" ]; then model=(--model sim); fi
  "$L" keys "$DEVICES" "$seed" | while read -r k; do
    "$C" enroll --state-dir "$st" --key "$k" --name "sim-$seed-${k: -12}" "${model[@]}" >/dev/null
  done
  if [ -n "$detect" ]; then fleet_baseline "$st"; fi
  # ulimit: one descriptor per device connection and then some.
  ulimit -n "$(ulimit -Hn)"
  "$C" serve --state-dir "$st" --listen 127.0.0.1:0 --max-connections $((DEVICES + 100)) \
    --frames-per-s 100000 > "$st/out" 2> "$st/log" &
  local pid=$!
  while ! grep -q '^ready' "$st/out" 2>/dev/null; do sleep 0.1; done
  local addr pin
  addr=$(sed -n 's/^listening tls //p' "$st/out")
  pin=$(sed -n 's/^pin_sha256 = "\(.*\)"/\1/p' "$st/out")
  "$L" run --address "$addr" --pin "$pin" --devices "$DEVICES" --seed "$seed" \
    --rate "$rate" --duration-s "$DURATION" --phase "$phase" > "$work/$name.json"
  local rss hwm
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid
  local stored
  stored=$(python3 - "$st/vigil.sqlite" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("select count(*) from frames").fetchone()[0])
PY
)
  echo "{\"rss_kib\":$rss,\"hwm_kib\":$hwm,\"stored\":$stored}" > "$work/$name.mem.json"
}

run_once unpaced 1 0
run_once paced 2 "$RATE"
run_once together 3 "$RATE" together
run_once detecting 4 0 spread detect
"$L" ceiling --n 20000 > "$work/ceiling.json"

python3 - "$work" "$DEVICES" "$DURATION" "$RATE" "$(nproc)" <<'PY'
import json, sys
w, devices, duration, rate, cores = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
u = json.load(open(f"{w}/unpaced.json")); um = json.load(open(f"{w}/unpaced.mem.json"))
p = json.load(open(f"{w}/paced.json")); pm = json.load(open(f"{w}/paced.mem.json"))
t = json.load(open(f"{w}/together.json")); tm = json.load(open(f"{w}/together.mem.json"))
d = json.load(open(f"{w}/detecting.json")); dm = json.load(open(f"{w}/detecting.mem.json"))
c = json.load(open(f"{w}/ceiling.json"))
batch_all = c["verify_batch64_per_core"] * cores
print(f"{devices} simulated devices over TLS 1.3, {duration} s per run, {cores} cores shared by collector and load generator\n")
print("| run | frames/s stored (acked) | ack p50 | ack p99 | collector VmRSS / VmHWM | frames in archive |")
print("|---|---|---|---|---|---|")
print(f"| unpaced | {u['frames_per_s']:,.0f} | {u['ack_p50_ms']:.1f} ms | {u['ack_p99_ms']:.1f} ms | {um['rss_kib']/1024:.0f} / {um['hwm_kib']/1024:.0f} MiB | {um['stored']:,} |")
print(f"| paced at {int(float(rate)):,}/s, sends spread | {p['frames_per_s']:,.0f} | {p['ack_p50_ms']:.1f} ms | {p['ack_p99_ms']:.1f} ms | {pm['rss_kib']/1024:.0f} / {pm['hwm_kib']/1024:.0f} MiB | {pm['stored']:,} |")
print(f"| paced at {int(float(rate)):,}/s, all devices at once | {t['frames_per_s']:,.0f} | {t['ack_p50_ms']:.1f} ms | {t['ack_p99_ms']:.1f} ms | {tm['rss_kib']/1024:.0f} / {tm['hwm_kib']/1024:.0f} MiB | {tm['stored']:,} |")
print(f"| unpaced, every device monitored (metric and change detectors on) | {d['frames_per_s']:,.0f} | {d['ack_p50_ms']:.1f} ms | {d['ack_p99_ms']:.1f} ms | {dm['rss_kib']/1024:.0f} / {dm['hwm_kib']/1024:.0f} MiB | {dm['stored']:,} |")
print()
print("| ed25519 verify ceiling (this machine) | per core | all cores |")
print("|---|---|---|")
for k, name in [("verify_strict_per_core", "verify_strict (what the collector does)"), ("verify_per_core", "verify"), ("verify_batch64_per_core", "verify_batch, 64 per batch")]:
    print(f"| {name} | {c[k]:,.0f}/s | {c[k]*cores:,.0f}/s |")
print()
print(f"with the detectors on, unpaced stored rate = {100*d['frames_per_s']/u['frames_per_s']:.0f} % of run 1's\n")
print(f"unpaced stored rate = {100*u['frames_per_s']/batch_all:.0f} % of the all-core batch-verify ceiling, "
      f"{100*u['frames_per_s']/(c['verify_strict_per_core']*cores):.0f} % of the all-core verify_strict ceiling")
PY
