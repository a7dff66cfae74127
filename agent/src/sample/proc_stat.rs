//! `/proc/stat`: aggregate CPU time by state (the `cpu` line), boot time
//! (`btime`). Kernels before 2.6.11 have no `steal`, before 2.6 no
//! `iowait`/`irq`/`softirq`: those read as absent, not as an error.

use super::{num, Issue};

/// Cumulative CPU ticks (USER_HZ) by state, summed over all CPUs, since
/// boot: the wire's `CpuTicks` fields, holding totals instead of increases.
pub type CpuTotals = vigil_protocol::sample::CpuTicks;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub cpu: Option<CpuTotals>,
    /// Number of CPUs (`cpuN` lines).
    pub cpus: u16,
    /// Boot time, seconds since the Unix epoch.
    pub btime: Option<u64>,
}

const FILE: &str = "/proc/stat";

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> ProcStat {
    let mut out = ProcStat::default();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        match f.next() {
            Some("cpu") => {
                let cols: Vec<&str> = f.collect();
                if cols.len() < 4 {
                    issues.push(Issue::new(
                        FILE,
                        format!("cpu line has {} columns, want at least 4", cols.len()),
                    ));
                    continue;
                }
                let mut col = |i: usize, name: &str| -> u64 {
                    match cols.get(i) {
                        None => 0, // older kernel: the state did not exist
                        Some(s) => num(FILE, name, Some(s), issues).unwrap_or(0),
                    }
                };
                out.cpu = Some(CpuTotals {
                    user: col(0, "cpu user"),
                    nice: col(1, "cpu nice"),
                    system: col(2, "cpu system"),
                    idle: col(3, "cpu idle"),
                    iowait: col(4, "cpu iowait"),
                    irq: col(5, "cpu irq"),
                    softirq: col(6, "cpu softirq"),
                    steal: col(7, "cpu steal"),
                });
            }
            Some(name)
                if name.starts_with("cpu") && name[3..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                out.cpus = out.cpus.saturating_add(1);
            }
            Some("btime") => out.btime = num(FILE, "btime", f.next(), issues),
            _ => {}
        }
    }
    if out.cpu.is_none() {
        issues.push(Issue::new(FILE, "no aggregate cpu line"));
    }
    out
}
