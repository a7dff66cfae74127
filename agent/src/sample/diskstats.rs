//! `/proc/diskstats`: per-device I/O counters for whole disks. Partitions,
//! loop and RAM devices are left out, so a disk's I/O is not counted twice.

use super::{num, Issue};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub name: String,
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub io_ms: u64,
}

const FILE: &str = "/proc/diskstats";

/// Whole-disk names: `sda`, `vda`, `xvda`, `hda`, `mmcblk0`, `nvme0n1`,
/// `md0`, `dm-0`; not `sda1`, `mmcblk0p1`, `nvme0n1p1`, `loop0`, `ram0`,
/// `mmcblk0boot0`, `mmcblk0rpmb`, `zram0`.
pub fn is_whole_disk(name: &str) -> bool {
    let digits_tail = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if ["loop", "ram", "zram", "sr", "fd"]
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(digits_tail))
    {
        return false;
    }
    if let Some(rest) = name.strip_prefix("mmcblk") {
        return digits_tail(rest);
    }
    if let Some(rest) = name.strip_prefix("nvme") {
        // nvme<ctrl>n<ns>, without a p<part> suffix
        return rest
            .split_once('n')
            .is_some_and(|(c, ns)| digits_tail(c) && digits_tail(ns));
    }
    for p in ["sd", "vd", "xvd", "hd"] {
        if let Some(rest) = name.strip_prefix(p) {
            return !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase());
        }
    }
    if let Some(rest) = name.strip_prefix("md").or_else(|| name.strip_prefix("dm-")) {
        return digits_tail(rest);
    }
    false
}

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> Vec<DiskCounters> {
    let mut out = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(&name) = cols.get(2) else {
            issues.push(Issue::new(FILE, "short line"));
            continue;
        };
        if !is_whole_disk(name) {
            continue;
        }
        if cols.len() < 14 {
            issues.push(Issue::new(
                FILE,
                format!("{name}: {} columns, want at least 14", cols.len()),
            ));
            continue;
        }
        let before = issues.len();
        let mut c = |i: usize| num(FILE, "counter", cols.get(i).copied(), issues).unwrap_or(0);
        let d = DiskCounters {
            name: name.to_string(),
            reads: c(3),
            read_sectors: c(5),
            writes: c(7),
            write_sectors: c(9),
            io_ms: c(12),
        };
        if issues.len() == before {
            out.push(d);
        }
    }
    out
}
