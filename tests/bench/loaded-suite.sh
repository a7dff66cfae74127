#!/usr/bin/env bash
# The whole test command under load (tests/README.md, "Tests that hold under
# load"): `bash .ci/run` while stress-ng keeps every core busy with a
# competing CPU job at normal priority, as another tenant of a shared CI
# machine would. Passing means no test depends on a wall-clock window being
# hit; the run's own figures (its total time, the soak's sample ratio, ...)
# are in its log. Run it on a clean clone, as CI would:
#   git clone . /tmp/loaded && cd /tmp/loaded && bash tests/bench/loaded-suite.sh
# Needs: stress-ng (installed here if missing) and what .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v stress-ng >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends stress-ng
fi
cores=$(nproc)
log=${LOG:-/tmp/vigil-loaded-suite.log}
stress-ng --cpu "$cores" --cpu-method matrixprod --timeout 0 --quiet &
stress=$!
trap 'kill $stress 2>/dev/null || true; wait $stress 2>/dev/null || true' EXIT
start=$(date +%s)
set +e
CI=true bash .ci/run > "$log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
summary=$(grep -E '^tests: ' "$log" | tail -1)
echo "loaded suite: exit $rc in ${took}s with $cores stress-ng CPU workers; ${summary:-no summary (see $log)}"
exit $rc
