#!/usr/bin/env bash
# Side-by-side footprint benchmark (tests/README.md, "Agent footprint"): for the same
# DURATION seconds, on the same machine, at the same time:
#   * vigil-agent (release) sampling every 1 s, signing, streaming over TLS 1.3
#     to a local receiver (tests/src/bin/vigil-bench-receiver.rs);
#   * prometheus-node-exporter with only the cpu, meminfo, netdev and
#     diskstats collectors, scraped once a second by curl;
#   * collectd with the cpu, memory and interface plugins at 1 s, sending
#     through its network plugin to a loopback UDP receiver (socat).
# Prints a Markdown table: VmRSS, VmHWM, CPU seconds and % of one core,
# bytes per second on the wire, binary size.
# Needs: prometheus-node-exporter collectd-core socat curl (apt-get install -y ...).
set -euo pipefail
DURATION=${DURATION:-120}
WARMUP=${WARMUP:-20}   # start-up (key load, TLS handshake, first socket walk) is excluded from CPU
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/vigil-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT

# The agent as it ships: the static musl build `xtask dist` makes (rust-lld,
# ring's C part built by gcc, no unwind tables). AGENT=path measures another.
if [ -z "${AGENT:-}" ]; then
  cargo run --locked -q -p xtask -- dist --only agent >/dev/null
  AGENT=target/dist/vigil-agent-x86_64-unknown-linux-musl
fi
cargo build --release --locked -q -p vigil-tests --bin vigil-bench-receiver
HZ=$(getconf CLK_TCK)

# --- vigil-agent -> receiver over TLS 1.3
"$AGENT" keygen --state-dir "$work/agent" > "$work/id"
KEY=$(sed -n 's/^key //p' "$work/id")
target/release/vigil-bench-receiver "$KEY" "$work/port" "$work/pin" "$work/agent.bytes" &
for _ in $(seq 100); do [ -s "$work/pin" ] && break; sleep 0.05; done
VIGIL_LOG=warn "$AGENT" run --state-dir "$work/agent" --collector "127.0.0.1:$(cat "$work/port")" \
  --pin "$(cat "$work/pin")" --interval-ms 1000 --batch 10 &
AGENT_PID=$!

# --- node_exporter, minimal collectors, scraped each second
NE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" --collector.disable-defaults \
  --collector.cpu --collector.meminfo --collector.netdev --collector.diskstats >/dev/null 2>&1 &
NE_PID=$!
( sleep 1; while :; do curl -s -o /dev/null -w '%{size_download}\n' "http://127.0.0.1:$NE_PORT/metrics" >> "$work/ne.bytes" || true; sleep 1; done ) &

# --- collectd -> UDP receiver
CD_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
: > "$work/cd.bytes"
socat -u "UDP-RECV:$CD_PORT,bind=127.0.0.1" "OPEN:$work/cd.bytes,append" &
cat > "$work/collectd.conf" <<CONF
Interval 1
BaseDir "$work"
PIDFile "$work/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin interface
LoadPlugin network
<Plugin network>
  Server "127.0.0.1" "$CD_PORT"
</Plugin>
CONF
collectd -f -C "$work/collectd.conf" >/dev/null 2>&1 &
CD_PID=$!

ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
sleep "$WARMUP"
T0_AGENT=$(ticks "$AGENT_PID"); T0_NE=$(ticks "$NE_PID"); T0_CD=$(ticks "$CD_PID")
B0_AGENT=$(cat "$work/agent.bytes"); B0_NE=$(awk '{s+=$1} END {print s+0}' "$work/ne.bytes"); B0_CD=$(stat -c %s "$work/cd.bytes")
# perf's task-clock (ns resolution) where perf works, else 10 ms ticks from /proc.
PERF=no
if perf stat -e task-clock -p $$ -- true >/dev/null 2>&1; then
  PERF=yes
  for n in AGENT NE CD; do
    pid_var="${n}_PID"
    perf stat -x, -e task-clock -p "${!pid_var}" -- sleep "$DURATION" 2> "$work/$n.perf" &
  done
fi
sleep "$DURATION"
sleep 1

row() { # name pid bytes binary ticks-at-start perf-file
  local name=$1 pid=$2 bytes=$3 bin=$4 t0=$5
  local rss hwm ticks
  rss=$(awk '/^VmRSS/{print $2}' /proc/"$pid"/status)
  hwm=$(awk '/^VmHWM/{print $2}' /proc/"$pid"/status)
  ticks=$(( $(ticks "$pid") - t0 ))
  if [ "$PERF" = yes ]; then # task-clock in ms -> ticks at HZ, kept fractional
    ticks=$(awk -F, -v hz="$HZ" '/task-clock/ {print $1 * hz / 1000}' "$work/$6.perf")
  fi
  awk -v n="$name" -v r="$rss" -v h="$hwm" -v t="$ticks" -v hz="$HZ" -v d="$DURATION" -v b="$bytes" -v s="$(stat -Lc %s "$bin")" \
    'BEGIN { printf "| %s | %.1f MiB | %.1f MiB | %.2f s | %.3f %% | %.0f B/s | %.2f MiB |\n", n, r/1024, h/1024, t/hz, 100*t/hz/d, b/d, s/1048576 }'
}
echo
echo "measured over ${DURATION} s after ${WARMUP} s of warm-up, $(nproc) cores, $(uname -r), CPU from perf task-clock: $PERF"
echo
echo "| process | VmRSS | VmHWM | CPU | of one core | on the wire | binary |"
echo "|---|---|---|---|---|---|---|"
row "vigil-agent (signed, TLS 1.3)" "$AGENT_PID" "$(( $(cat "$work/agent.bytes") - B0_AGENT ))" "$AGENT" "$T0_AGENT" AGENT
row "node_exporter (4 collectors, scraped 1/s)" "$NE_PID" "$(( $(awk '{s+=$1} END {print s+0}' "$work/ne.bytes") - B0_NE ))" "$(command -v prometheus-node-exporter)" "$T0_NE" NE
row "collectd (cpu, memory, interface; network)" "$CD_PID" "$(( $(stat -c %s "$work/cd.bytes") - B0_CD ))" "$(command -v collectd)" "$T0_CD" CD
