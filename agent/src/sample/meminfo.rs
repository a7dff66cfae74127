//! `/proc/meminfo`: total and available memory, swap. Kernels before 3.14
//! have no `MemAvailable`; it is then estimated as free + buffers + cached
//! (what `free` did), and the estimate is reported as an issue.

use super::Issue;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub total_kib: Option<u64>,
    pub available_kib: Option<u64>,
    pub swap_total_kib: Option<u64>,
    pub swap_free_kib: Option<u64>,
}

const FILE: &str = "/proc/meminfo";

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> Meminfo {
    let mut m = Meminfo::default();
    let (mut free, mut buffers, mut cached) = (None, None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        // Values are in kB (really KiB). Lines we do not use are not checked
        // (2.4-era files start with a `total: used: free:` table).
        let slot = match key.trim() {
            "MemTotal" => &mut m.total_kib,
            "MemAvailable" => &mut m.available_kib,
            "SwapTotal" => &mut m.swap_total_kib,
            "SwapFree" => &mut m.swap_free_kib,
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            _ => continue,
        };
        match rest.split_ascii_whitespace().next().map(str::parse::<u64>) {
            Some(Ok(v)) => *slot = Some(v),
            _ => issues.push(Issue::new(FILE, format!("{}: not a number", key.trim()))),
        }
    }
    if m.available_kib.is_none() {
        if let (Some(f), Some(b), Some(c)) = (free, buffers, cached) {
            m.available_kib = Some(f + b + c);
            issues.push(Issue::new(
                FILE,
                "no MemAvailable (kernel < 3.14): estimated as MemFree + Buffers + Cached",
            ));
        } else {
            issues.push(Issue::new(FILE, "no MemAvailable"));
        }
    }
    if m.total_kib.is_none() {
        issues.push(Issue::new(FILE, "no MemTotal"));
    }
    m
}
