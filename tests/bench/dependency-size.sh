#!/usr/bin/env bash
# What `sysinfo` and `procfs-core` would add to a static musl binary (README,
# "Dependencies"): three throw-away probes in a temp dir, built with the
# agent's release profile; each reads the same kind of data the agent reads.
set -euo pipefail
work=$(mktemp -d /tmp/vigil-depsize.XXXXXX)
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
export CC_x86_64_unknown_linux_musl=gcc CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
profile='[profile.release]
opt-level = "s"
lto = "fat"
codegen-units = 1
panic = "abort"
strip = true'
probe() { # name dependency-line main.rs
  mkdir -p "$work/$1/src"
  printf '[package]\nname = "probe"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n%s\n%s\n' "$2" "$profile" > "$work/$1/Cargo.toml"
  printf '%s\n' "$3" > "$work/$1/src/main.rs"
  (cd "$work/$1" && cargo build --release -q --target x86_64-unknown-linux-musl)
  stat -c %s "$work/$1/target/x86_64-unknown-linux-musl/release/probe"
}
base=$(probe base '' 'use std::io::Read;
fn main() { for f in ["/proc/stat", "/proc/meminfo", "/proc/net/dev", "/proc/diskstats"] {
  let mut s = String::new(); std::fs::File::open(f).unwrap().read_to_string(&mut s).unwrap();
  println!("{} {}", f, s.lines().count()); } }')
sysinfo=$(probe sysinfo 'sysinfo = { version = "0.33", default-features = false, features = ["system"] }' 'fn main() {
  let mut s = sysinfo::System::new(); s.refresh_cpu_usage(); s.refresh_memory();
  println!("{} {} {}", s.total_memory(), s.available_memory(), s.cpus().len()); }')
procfs=$(probe procfs 'procfs-core = { version = "0.17", default-features = false }' 'use procfs_core::{FromRead, Meminfo, DiskStats, net::InterfaceDeviceStatus};
fn main() { let m = Meminfo::from_file("/proc/meminfo").unwrap();
  let n = InterfaceDeviceStatus::from_file("/proc/net/dev").unwrap();
  let d = DiskStats::from_file("/proc/diskstats").unwrap();
  println!("{} {} {}", m.mem_total, n.0.len(), d.0.len()); }')
echo "| probe | static binary | added |"
echo "|---|---|---|"
echo "| std only (reads the four files) | $base B | |"
echo "| sysinfo 0.33 (CPU usage, memory) | $sysinfo B | $((sysinfo - base)) B |"
echo "| procfs-core 0.17 (meminfo, net/dev, diskstats) | $procfs B | $((procfs - base)) B |"
