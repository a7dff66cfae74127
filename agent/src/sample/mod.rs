//! Sources: pure parsers of /proc files (one module per file) and the
//! sampler that reads them under a root directory and turns cumulative
//! kernel counters into interval samples. A file that is missing or odd
//! yields a partial reading plus an `Issue`; nothing here aborts a tick.

pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod net_dev;
pub mod pressure;
pub mod proc_stat;
pub mod reading;
pub mod sock_diag;
pub mod socket_row;
pub mod sockets;
pub mod uptime;

use std::fmt;

/// Something a sampler could not read or understand. Partial results are
/// data: the reading goes on without the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: &'static str,
    pub what: String,
}

impl Issue {
    pub fn new(file: &'static str, what: impl Into<String>) -> Self {
        Self {
            file,
            what: what.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.what)
    }
}

/// Parses a decimal field, recording an issue when it is not one.
fn num(file: &'static str, field: &str, s: Option<&str>, issues: &mut Vec<Issue>) -> Option<u64> {
    match s.map(str::parse::<u64>) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            issues.push(Issue::new(file, format!("{field}: not a number")));
            None
        }
        None => {
            issues.push(Issue::new(file, format!("{field}: missing")));
            None
        }
    }
}

/// `s` cut at a character boundary to fit a bounded wire string.
pub(crate) fn fit<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}
