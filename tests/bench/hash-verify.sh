#!/usr/bin/env bash
# Hashing benchmark (tests/README.md, "Manifest verification speed"): the same tree
# of about 1.15 GB (40,000 small files of 1-32 KiB and four 128 MiB "model"
# files), page cache warm, verified or hashed by
#   * vigil-agent manifest verify (release, static musl) with 1 and 2 threads;
#   * sha256sum over the same files, one process and xargs -P2;
#   * openssl dgst -sha256, one process and xargs -P2 (SHA extensions: the
#     per-core limit);
#   * AIDE --check with a database of the same tree (sha256, perms, owner).
# Each is run RUNS times in rotation; prints a Markdown table of medians and
# the ratio to one openssl process.
# Needs: aide openssl coreutils python3 (apt-get install -y aide openssl).
set -euo pipefail
RUNS=${RUNS:-5}
cd "$(dirname "$0")/../.."
work=${WORK:-/var/tmp/vigil-hash-bench}
mkdir -p "$work"

rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
CC_x86_64_unknown_linux_musl=gcc CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
  cargo build --release --locked -q -p vigil-agent --target x86_64-unknown-linux-musl
AGENT=$PWD/target/x86_64-unknown-linux-musl/release/vigil-agent

tree=$work/tree
if [ ! -f "$work/tree.done" ]; then
  rm -rf "$tree"
  python3 - "$tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
for i in range(40000):
    d = os.path.join(root, "usr", f"d{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 32768)))
os.makedirs(os.path.join(root, "opt/model"), exist_ok=True)
for i in range(4):
    with open(os.path.join(root, f"opt/model/m{i}.bin"), "wb") as f:
        for _ in range(128):
            f.write(rnd.randbytes(1 << 20))
PY
  touch "$work/tree.done"
fi
du -sb "$tree" | awk '{printf "tree: %.2f GB, ", $1/1e9}'
find "$tree" -type f | wc -l | awk '{print $1 " files"}'

cd "$work"
rm -f bench.key bench.pub
"$AGENT" manifest keygen --secret-key bench.key --public-key bench.pub >/dev/null
"$AGENT" manifest build --root "$tree" --class firmware --version 1 --out tree.manifest 2>/dev/null
"$AGENT" manifest sign --secret-key bench.key tree.manifest >/dev/null
find "$tree" -type f -print0 > files.list

cat > aide.conf <<CONF
database_in=file:$work/aide.db
database_out=file:$work/aide.db.new
report_url=stdout
$tree p+u+g+s+sha256
CONF
aide --config aide.conf --init >/dev/null 2>&1 || true
mv -f aide.db.new aide.db

# Warm the page cache.
xargs -0 cat < files.list > /dev/null

declare -A CMD=(
  [vigil1]="$AGENT manifest verify --threads 1 --public-key bench.pub --root $tree tree.manifest"
  [vigil2]="$AGENT manifest verify --threads 2 --public-key bench.pub --root $tree tree.manifest"
  [sha1]="xargs -0 sha256sum < files.list"
  [sha2]="xargs -0 -P2 -n 2000 sha256sum < files.list"
  [ossl1]="xargs -0 openssl dgst -sha256 < files.list"
  [ossl2]="xargs -0 -P2 -n 2000 openssl dgst -sha256 < files.list"
  [aide]="aide --config aide.conf --check"
)
ORDER="ossl1 ossl2 sha1 sha2 vigil1 vigil2 aide"
declare -A T
for r in $(seq "$RUNS"); do
  for k in $ORDER; do
    s=$(date +%s.%N)
    bash -c "${CMD[$k]}" > /dev/null 2>&1 || { rc=$?; [ "$k" = aide ] || [ $rc -le 1 ] || { echo "$k failed ($rc)"; exit 1; }; }
    e=$(date +%s.%N)
    T[$k]="${T[$k]:-} $(echo "$e - $s" | bc)"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=$(echo "${T[ossl1]}" | median)
declare -A NAME=(
  [vigil1]="vigil-agent manifest verify, 1 thread"
  [vigil2]="vigil-agent manifest verify, 2 threads"
  [sha1]="sha256sum, one process"
  [sha2]="sha256sum, xargs -P2"
  [ossl1]="openssl dgst -sha256, one process"
  [ossl2]="openssl dgst -sha256, xargs -P2"
  [aide]="aide --check (sha256, perms, owner)"
)
echo
echo "| tool | median of $RUNS (s) | all runs (s) | speed vs one openssl process |"
echo "|---|---|---|---|"
for k in vigil1 vigil2 ossl1 ossl2 sha1 sha2 aide; do
  m=$(echo "${T[$k]}" | median)
  printf "| %s | %.2f | %s | %.2fx |\n" "${NAME[$k]}" "$m" "$(echo ${T[$k]} | xargs printf '%.2f ')" "$(echo "$base / $m" | bc -l)"
done
