//! The metrics the detectors watch, derived from a device's `Sample`: CPU
//! busy by state, memory and swap, pressure, per-interface rx/tx bytes and
//! packets, disk I/O, process count. Rates are per second of the sample's
//! own interval, so a changed sampling interval does not look like an
//! anomaly. Pure: a sample in, readings out.

use vigil_protocol::sample::Sample;

use crate::detect::score::Sides;
use crate::store::Layout;

/// What a metric measures; its name is the `--metric` of `detect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CpuBusy,
    CpuUser,
    CpuSystem,
    CpuIowait,
    CpuSteal,
    MemAvailable,
    SwapUsed,
    PsiCpu,
    PsiMemory,
    PsiIo,
    NetRxBytes,
    NetTxBytes,
    NetRxPackets,
    NetTxPackets,
    DiskReadBytes,
    DiskWriteBytes,
    Processes,
    /// A plain series with no known unit (`detect --csv` on `timestamp,value`).
    Value,
}

pub const KINDS: &[Kind] = &[
    Kind::CpuBusy,
    Kind::CpuUser,
    Kind::CpuSystem,
    Kind::CpuIowait,
    Kind::CpuSteal,
    Kind::MemAvailable,
    Kind::SwapUsed,
    Kind::PsiCpu,
    Kind::PsiMemory,
    Kind::PsiIo,
    Kind::NetRxBytes,
    Kind::NetTxBytes,
    Kind::NetRxPackets,
    Kind::NetTxPackets,
    Kind::DiskReadBytes,
    Kind::DiskWriteBytes,
    Kind::Processes,
    Kind::Value,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CpuBusy => "cpu.busy",
            Kind::CpuUser => "cpu.user",
            Kind::CpuSystem => "cpu.system",
            Kind::CpuIowait => "cpu.iowait",
            Kind::CpuSteal => "cpu.steal",
            Kind::MemAvailable => "mem.available",
            Kind::SwapUsed => "swap.used",
            Kind::PsiCpu => "psi.cpu",
            Kind::PsiMemory => "psi.memory",
            Kind::PsiIo => "psi.io",
            Kind::NetRxBytes => "net.rx_bytes",
            Kind::NetTxBytes => "net.tx_bytes",
            Kind::NetRxPackets => "net.rx_packets",
            Kind::NetTxPackets => "net.tx_packets",
            Kind::DiskReadBytes => "disk.read_bytes",
            Kind::DiskWriteBytes => "disk.write_bytes",
            Kind::Processes => "processes",
            Kind::Value => "value",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        KINDS.iter().copied().find(|k| k.name() == s)
    }

    pub fn unit(self) -> &'static str {
        match self {
            Kind::CpuBusy | Kind::CpuUser | Kind::CpuSystem | Kind::CpuIowait | Kind::CpuSteal => {
                "% of all CPUs"
            }
            Kind::PsiCpu | Kind::PsiMemory | Kind::PsiIo => "% of time stalled",
            Kind::MemAvailable | Kind::SwapUsed => "KiB",
            Kind::NetRxBytes | Kind::NetTxBytes | Kind::DiskReadBytes | Kind::DiskWriteBytes => {
                "bytes/s"
            }
            Kind::NetRxPackets | Kind::NetTxPackets => "packets/s",
            Kind::Processes => "processes",
            Kind::Value => "",
        }
    }

    /// The smallest learned spread that counts: below it, differences are
    /// noise on any device (a CPU wobbling by a few points, a few packets
    /// a second). `Value` has none: a plain series is taken as it is.
    pub fn floor(self) -> f64 {
        match self {
            Kind::CpuBusy | Kind::CpuUser | Kind::CpuSystem => 10.0,
            Kind::CpuIowait | Kind::CpuSteal => 5.0,
            Kind::PsiCpu | Kind::PsiMemory | Kind::PsiIo => 5.0,
            Kind::MemAvailable | Kind::SwapUsed => 32_768.0,
            Kind::NetRxBytes | Kind::NetTxBytes => 65_536.0,
            Kind::NetRxPackets | Kind::NetTxPackets => 100.0,
            Kind::DiskReadBytes | Kind::DiskWriteBytes => 1_048_576.0,
            Kind::Processes => 20.0,
            Kind::Value => 0.0,
        }
    }

    /// The floor for a metric whose largest learned value is `max`: memory
    /// and swap also at least 5 % of it (page cache comes and goes).
    pub fn floor_for(self, max: f64) -> f64 {
        match self {
            Kind::MemAvailable | Kind::SwapUsed => self.floor().max(0.05 * max),
            _ => self.floor(),
        }
    }

    /// The largest value the metric can take, where one is known (a
    /// share of time or of all CPUs).
    pub fn ceiling(self) -> Option<f64> {
        match self {
            Kind::CpuBusy
            | Kind::CpuUser
            | Kind::CpuSystem
            | Kind::CpuIowait
            | Kind::CpuSteal
            | Kind::PsiCpu
            | Kind::PsiMemory
            | Kind::PsiIo => Some(100.0),
            _ => None,
        }
    }

    /// Transmitted bytes matter only when they rise (exfiltration); every
    /// other metric both ways (a crashed service is as telling as a miner).
    pub fn sides(self) -> Sides {
        match self {
            Kind::NetTxBytes | Kind::NetTxPackets => Sides::High,
            _ => Sides::Both,
        }
    }
}

/// One metric's value in one sample. `key` names the metric on the
/// device, e.g. `cpu.busy` or `net.eth0.tx_bytes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub key: String,
    pub kind: Kind,
    pub value: f64,
}

/// Every watched metric of a sample. Loopback traffic is the device
/// talking to itself and is left out.
pub fn readings(s: &Sample, layout: &Layout) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut put = |key: String, kind: Kind, value: f64| {
        if value.is_finite() {
            out.push(Reading { key, kind, value });
        }
    };
    let c = &s.cpu;
    let idle = c.idle as f64 + c.iowait as f64;
    let busy = [c.user, c.nice, c.system, c.irq, c.softirq, c.steal]
        .iter()
        .map(|&v| v as f64)
        .sum::<f64>();
    let total = busy + idle;
    if total > 0.0 {
        let pct = |v: f64| 100.0 * v / total;
        put("cpu.busy".into(), Kind::CpuBusy, pct(busy));
        put(
            "cpu.user".into(),
            Kind::CpuUser,
            pct(c.user as f64 + c.nice as f64),
        );
        put(
            "cpu.system".into(),
            Kind::CpuSystem,
            pct(c.system as f64 + c.irq as f64 + c.softirq as f64),
        );
        put("cpu.iowait".into(), Kind::CpuIowait, pct(c.iowait as f64));
        put("cpu.steal".into(), Kind::CpuSteal, pct(c.steal as f64));
    }
    if s.memory.total_kib > 0 {
        put(
            "mem.available".into(),
            Kind::MemAvailable,
            s.memory.available_kib as f64,
        );
    }
    if s.memory.swap_total_kib > 0 {
        put(
            "swap.used".into(),
            Kind::SwapUsed,
            s.memory.swap_used_kib as f64,
        );
    }
    let secs = s.interval_ms as f64 / 1000.0;
    if let Some(p) = &s.pressure {
        if secs > 0.0 {
            let pct = |ms: u64| ms as f64 / 10.0 / secs;
            put("psi.cpu".into(), Kind::PsiCpu, pct(p.cpu_some_ms));
            put("psi.memory".into(), Kind::PsiMemory, pct(p.memory_some_ms));
            put("psi.io".into(), Kind::PsiIo, pct(p.io_some_ms));
        }
    }
    if secs > 0.0 {
        for n in &s.net {
            let name = layout
                .interfaces
                .get(usize::from(n.iface))
                .cloned()
                .unwrap_or_else(|| format!("#{}", n.iface));
            if name == "lo" {
                continue;
            }
            let rate = |v: u64| v as f64 / secs;
            put(
                format!("net.{name}.rx_bytes"),
                Kind::NetRxBytes,
                rate(n.rx_bytes),
            );
            put(
                format!("net.{name}.tx_bytes"),
                Kind::NetTxBytes,
                rate(n.tx_bytes),
            );
            put(
                format!("net.{name}.rx_packets"),
                Kind::NetRxPackets,
                rate(n.rx_packets),
            );
            put(
                format!("net.{name}.tx_packets"),
                Kind::NetTxPackets,
                rate(n.tx_packets),
            );
        }
        if !s.disk.is_empty() {
            let sectors = |f: fn(&vigil_protocol::sample::DiskCounters) -> u64| {
                s.disk.iter().map(f).sum::<u64>() as f64 * 512.0 / secs
            };
            put(
                "disk.read_bytes".into(),
                Kind::DiskReadBytes,
                sectors(|d| d.read_sectors),
            );
            put(
                "disk.write_bytes".into(),
                Kind::DiskWriteBytes,
                sectors(|d| d.write_sectors),
            );
        }
    }
    put("processes".into(), Kind::Processes, s.processes as f64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protocol::sample::{CpuTicks, Memory, NetCounters};

    #[test]
    fn readings_are_rates_and_percentages_without_loopback() {
        let mut s = Sample {
            interval_ms: 2000,
            cpu: CpuTicks {
                user: 30,
                system: 10,
                idle: 50,
                iowait: 10,
                ..CpuTicks::default()
            },
            memory: Memory {
                total_kib: 1000,
                available_kib: 600,
                ..Memory::default()
            },
            processes: 42,
            ..Sample::default()
        };
        for (iface, tx) in [(0u8, 5000u64), (1, 4000)] {
            let n = NetCounters {
                iface,
                tx_bytes: tx,
                ..NetCounters::default()
            };
            s.net.push(n).expect("room");
        }
        let layout = Layout {
            interfaces: vec!["lo".into(), "eth0".into()],
            disks: vec![],
        };
        let r = readings(&s, &layout);
        let get = |k: &str| r.iter().find(|x| x.key == k).map(|x| x.value);
        assert_eq!(get("cpu.busy"), Some(40.0));
        assert_eq!(get("cpu.iowait"), Some(10.0));
        assert_eq!(get("mem.available"), Some(600.0));
        assert_eq!(get("swap.used"), None, "no swap configured");
        assert_eq!(get("net.eth0.tx_bytes"), Some(2000.0));
        assert_eq!(get("net.lo.tx_bytes"), None);
        assert_eq!(get("processes"), Some(42.0));
        for k in KINDS {
            assert_eq!(Kind::from_name(k.name()), Some(*k));
        }
    }
}
