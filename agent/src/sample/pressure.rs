//! `/proc/pressure/{cpu,memory,io}`: pressure stall information, as the
//! cumulative `total=` stall time in microseconds. Absent before Linux 4.20
//! or when PSI is disabled: that is not an issue, just `None`.

use super::Issue;

/// Cumulative stall microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    pub some_us: u64,
    /// `None` for CPU on kernels that only report `some`.
    pub full_us: Option<u64>,
}

pub fn parse(file: &'static str, text: &str, issues: &mut Vec<Issue>) -> Option<Stall> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let slot = match f.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        match f
            .find_map(|kv| kv.strip_prefix("total="))
            .map(str::parse::<u64>)
        {
            Some(Ok(v)) => *slot = Some(v),
            _ => issues.push(Issue::new(file, "line without a numeric total=")),
        }
    }
    match some {
        Some(some_us) => Some(Stall {
            some_us,
            full_us: full,
        }),
        None => {
            issues.push(Issue::new(file, "no `some` line"));
            None
        }
    }
}
