#!/usr/bin/env bash
# Scores `vigil-collector detect --csv` on the NAB DEV series with the
# team's scorer: one configuration (the defaults) for every file, no
# per-file tuning. Prints the scorer's table (per file and overall, every
# profile). Usage: bash tests/bench/nab-dev.sh [extra detect options...]
# Needs: python3; the data in ../shared/data/nab-dev (NAB_DEV to override).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${NAB_DEV:-../shared/data/nab-dev}
scorer=${NAB_SCORE:-../shared/tools/nab_score.py}
# VIGIL_COLLECTOR: a vigil-collector binary to use instead of building one.
collector=${VIGIL_COLLECTOR:-}
if [ -z "$collector" ]; then
  cargo build --release --locked -q -p vigil-collector
  collector=target/release/vigil-collector
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "file,timestamp" > "$out/detections.csv"
python3 -c 'import json,sys; print("\n".join(sorted(json.load(open(sys.argv[1])))))' \
  "$data/combined_windows.json" | while read -r f; do
  "$collector" detect --csv "$data/$f" "$@" > "$out/rows.csv" 2>> "$out/detect.log"
  # Rows flagged 1 become detections; the timestamp is the row's own.
  awk -F, -v f="$f" 'NR > 1 && $NF == 1 { print f "," $1 }' "$out/rows.csv" >> "$out/detections.csv"
done
python3 "$scorer" "$data/combined_windows.json" "$out/detections.csv" --profile all 2>/dev/null
