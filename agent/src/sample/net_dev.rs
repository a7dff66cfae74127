//! `/proc/net/dev`: per-interface counters. Splits each line at the first
//! `:` rather than at whitespace, because old kernels print large counters
//! glued to the name (`eth0:1234567890`).

use super::{num, Issue};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

const FILE: &str = "/proc/net/dev";

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> Vec<IfCounters> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            issues.push(Issue::new(FILE, "line without an interface name"));
            continue;
        };
        let cols: Vec<&str> = rest.split_ascii_whitespace().collect();
        if cols.len() < 16 {
            issues.push(Issue::new(
                FILE,
                format!("{}: {} columns, want 16", name.trim(), cols.len()),
            ));
            continue;
        }
        let before = issues.len();
        let mut c = |i: usize| num(FILE, "counter", cols.get(i).copied(), issues).unwrap_or(0);
        let counters = IfCounters {
            name: name.trim().to_string(),
            rx_bytes: c(0),
            rx_packets: c(1),
            rx_errors: c(2),
            rx_dropped: c(3),
            tx_bytes: c(8),
            tx_packets: c(9),
            tx_errors: c(10),
            tx_dropped: c(11),
        };
        if issues.len() == before {
            out.push(counters);
        }
    }
    out
}
