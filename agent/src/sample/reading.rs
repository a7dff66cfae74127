//! One reading of the kernel's cumulative counters under a root directory
//! (`/` on a device, a fixture tree in tests), and the transform from two
//! readings to the interval `Sample` the wire carries.

use std::io::Read;
use std::path::{Path, PathBuf};

use vigil_protocol::body::{MAX_DISKS, MAX_IFACES};
use vigil_protocol::sample::{self as wire, CpuTicks, Memory, Pressure};

use super::diskstats::DiskCounters;
use super::net_dev::IfCounters;
use super::pressure::Stall;
use super::proc_stat::CpuTotals;
use super::{diskstats, loadavg, meminfo, net_dev, pressure, proc_stat, uptime, Issue};

/// Largest /proc file read; anything longer is cut (and reported).
const MAX_FILE: u64 = 4 << 20;

/// Cumulative counters and gauges as the kernel reports them.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub time_ms: u64,
    pub uptime_s: Option<u64>,
    pub boot_time_s: Option<u64>,
    pub cpus: u16,
    pub cpu: Option<CpuTotals>,
    pub memory: meminfo::Meminfo,
    /// cpu, memory, io; `None` where the kernel has no PSI.
    pub pressure: Option<[Stall; 3]>,
    pub network: Vec<IfCounters>,
    pub disk: Vec<DiskCounters>,
    pub load_centi: Option<[u64; 3]>,
    pub processes: Option<u64>,
}

/// Reads a file under `root`, at most `MAX_FILE` bytes.
pub fn read_file(root: &Path, rel: &str) -> std::io::Result<String> {
    let path: PathBuf = root.join(rel.trim_start_matches('/'));
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Reads everything under `root` once (`/proc/...` relative to it).
pub fn read(root: &Path, time_ms: u64, issues: &mut Vec<Issue>) -> Reading {
    let mut reader = Reader::new(root);
    reader.count_processes(issues);
    reader.read(time_ms, issues)
}

/// Keeps the /proc files open between ticks and reads each again from the
/// start: one `lseek` + `read` per file per tick instead of a path lookup,
/// `open` and `close`. A file that fails is reopened on the next tick.
///
/// The process count is not read per tick: listing /proc costs the kernel a
/// dentry lookup per process, which was a fifth of the agent's CPU at 1 s
/// (tests/README.md, "Agent footprint"). The sampler counts at the
/// process-table scan (`count_processes`, or `set_processes` with the
/// sessions tracker's listing) and each reading carries the last count.
pub struct Reader {
    root: PathBuf,
    files: Vec<(&'static str, std::fs::File)>,
    buf: String,
    psi: Option<bool>,
    processes: Option<u64>,
}

impl Reader {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            files: Vec::new(),
            buf: String::new(),
            psi: None,
            processes: None,
        }
    }

    /// Lists /proc and keeps the count for the readings that follow.
    pub fn count_processes(&mut self, issues: &mut Vec<Issue>) {
        self.processes = count_processes(&self.root, issues);
    }

    /// A count made by another listing of /proc (the sessions tracker's).
    pub fn set_processes(&mut self, n: Option<u64>) {
        self.processes = n;
    }

    fn text(&mut self, rel: &'static str) -> std::io::Result<&str> {
        use std::io::{Seek, SeekFrom};
        let pos = match self.files.iter().position(|(r, _)| *r == rel) {
            Some(p) => p,
            None => {
                let f = std::fs::File::open(self.root.join(rel.trim_start_matches('/')))?;
                self.files.push((rel, f));
                self.files.len() - 1
            }
        };
        self.buf.clear();
        let r = match self.files.get_mut(pos) {
            Some((_, f)) => f
                .seek(SeekFrom::Start(0))
                .and_then(|_| (&mut *f).take(MAX_FILE).read_to_string(&mut self.buf)),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        if let Err(e) = r {
            self.files.swap_remove(pos);
            return Err(e);
        }
        Ok(&self.buf)
    }

    /// The file's text, or an issue naming it.
    fn get(&mut self, rel: &'static str, issues: &mut Vec<Issue>) -> Option<&str> {
        match self.text(rel) {
            Ok(_) => Some(&self.buf),
            Err(e) => {
                issues.push(Issue::new(rel, format!("unreadable: {e}")));
                None
            }
        }
    }

    pub fn read(&mut self, time_ms: u64, issues: &mut Vec<Issue>) -> Reading {
        let mut r = Reading {
            time_ms,
            ..Reading::default()
        };
        if let Some(t) = self.get("/proc/stat", issues) {
            let s = proc_stat::parse(t, issues);
            r.cpu = s.cpu;
            r.cpus = s.cpus;
            r.boot_time_s = s.btime;
        }
        if let Some(t) = self.get("/proc/meminfo", issues) {
            r.memory = meminfo::parse(t, issues);
        }
        if let Some(t) = self.get("/proc/net/dev", issues) {
            r.network = net_dev::parse(t, issues);
        }
        if let Some(t) = self.get("/proc/diskstats", issues) {
            r.disk = diskstats::parse(t, issues);
        }
        if let Some(t) = self.get("/proc/loadavg", issues) {
            r.load_centi = loadavg::parse(t, issues);
        }
        r.uptime_s = if self.root == Path::new("/") {
            // The clock /proc/uptime is made from, without reading a file.
            match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
                Ok(t) => u64::try_from(t.tv_sec()).ok(),
                Err(e) => {
                    issues.push(Issue::new("/proc/uptime", format!("CLOCK_BOOTTIME: {e}")));
                    None
                }
            }
        } else {
            self.get("/proc/uptime", issues)
                .and_then(|t| uptime::parse(t, issues))
        };
        r.pressure = self.pressure(issues);
        r.processes = self.processes;
        r
    }

    fn pressure(&mut self, issues: &mut Vec<Issue>) -> Option<[Stall; 3]> {
        let root = self.root.clone();
        if !*self
            .psi
            .get_or_insert_with(|| root.join("proc/pressure").is_dir())
        {
            return None; // kernel without PSI: not an issue
        }
        let mut one = |rel: &'static str, issues: &mut Vec<Issue>| match self.text(rel) {
            Ok(t) => pressure::parse(rel, t, issues),
            // Present but unreadable: PSI compiled in, disabled at boot (psi=0).
            Err(_) => None,
        };
        Some([
            one("/proc/pressure/cpu", issues)?,
            one("/proc/pressure/memory", issues)?,
            one("/proc/pressure/io", issues)?,
        ])
    }
}

fn count_processes(root: &Path, issues: &mut Vec<Issue>) -> Option<u64> {
    match std::fs::read_dir(root.join("proc")) {
        Ok(dir) => Some(
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64,
        ),
        Err(e) => {
            issues.push(Issue::new("/proc", format!("cannot list processes: {e}")));
            None
        }
    }
}

/// Interfaces and disks a device reports, in the order its `Hello` lists
/// them (samples refer to them by index); at most 8 of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub interfaces: Vec<String>,
    pub disks: Vec<String>,
}

impl Layout {
    pub fn of(r: &Reading) -> Self {
        Self {
            interfaces: r
                .network
                .iter()
                .take(MAX_IFACES)
                .map(|i| i.name.clone())
                .collect(),
            disks: r
                .disk
                .iter()
                .take(MAX_DISKS)
                .map(|d| d.name.clone())
                .collect(),
        }
    }
}

/// Turns consecutive readings into interval samples. Keeps the previous
/// reading and the sub-millisecond remainders of pressure stall time.
#[derive(Debug, Default)]
pub struct Differ {
    prev: Option<Reading>,
    psi_carry_us: [u64; 5],
}

/// Increase of a cumulative counter; a counter that went backwards was
/// reset (interface re-created, wrap) and counts from zero.
fn inc(new: u64, old: u64) -> u64 {
    new.checked_sub(old).unwrap_or(new)
}

impl Differ {
    /// The sample for the interval ending at `r`, or `None` for the first
    /// reading (there is no interval yet). `interval_ms` comes from a
    /// monotonic clock, not from wall-clock times.
    pub fn next(&mut self, r: Reading, interval_ms: u64, layout: &Layout) -> Option<wire::Sample> {
        let p = self.prev.replace(r)?;
        let r = self.prev.as_ref()?;
        let mut s = wire::Sample {
            time_ms: r.time_ms,
            interval_ms,
            uptime_s: r.uptime_s.unwrap_or(0),
            processes: r.processes.unwrap_or(0),
            load_centi: r.load_centi.unwrap_or_default(),
            ..wire::Sample::default()
        };
        if let (Some(c), Some(o)) = (r.cpu, p.cpu) {
            s.cpu = CpuTicks {
                user: inc(c.user, o.user),
                nice: inc(c.nice, o.nice),
                system: inc(c.system, o.system),
                idle: inc(c.idle, o.idle),
                iowait: inc(c.iowait, o.iowait),
                irq: inc(c.irq, o.irq),
                softirq: inc(c.softirq, o.softirq),
                steal: inc(c.steal, o.steal),
            };
        }
        let m = &r.memory;
        s.memory = Memory {
            total_kib: m.total_kib.unwrap_or(0),
            available_kib: m.available_kib.unwrap_or(0),
            swap_total_kib: m.swap_total_kib.unwrap_or(0),
            swap_used_kib: m
                .swap_total_kib
                .zip(m.swap_free_kib)
                .map_or(0, |(t, f)| t.saturating_sub(f)),
        };
        if let (Some(n), Some(o)) = (r.pressure, p.pressure) {
            let us = [
                inc(n[0].some_us, o[0].some_us),
                inc(n[1].some_us, o[1].some_us),
                inc(n[1].full_us.unwrap_or(0), o[1].full_us.unwrap_or(0)),
                inc(n[2].some_us, o[2].some_us),
                inc(n[2].full_us.unwrap_or(0), o[2].full_us.unwrap_or(0)),
            ];
            let mut ms = [0u64; 5];
            for ((out, carry), v) in ms.iter_mut().zip(&mut self.psi_carry_us).zip(us) {
                let total = v + *carry;
                *out = total / 1000;
                *carry = total % 1000;
            }
            s.pressure = Some(Pressure {
                cpu_some_ms: ms[0],
                memory_some_ms: ms[1],
                memory_full_ms: ms[2],
                io_some_ms: ms[3],
                io_full_ms: ms[4],
            });
        }
        for (i, name) in layout.interfaces.iter().enumerate() {
            let (Some(n), Some(o)) = (
                find(&r.network, name, |x| &x.name),
                find(&p.network, name, |x| &x.name),
            ) else {
                continue;
            };
            let c = wire::NetCounters {
                iface: u8::try_from(i).unwrap_or(u8::MAX),
                rx_bytes: inc(n.rx_bytes, o.rx_bytes),
                rx_packets: inc(n.rx_packets, o.rx_packets),
                rx_errors: inc(n.rx_errors, o.rx_errors),
                rx_dropped: inc(n.rx_dropped, o.rx_dropped),
                tx_bytes: inc(n.tx_bytes, o.tx_bytes),
                tx_packets: inc(n.tx_packets, o.tx_packets),
                tx_errors: inc(n.tx_errors, o.tx_errors),
                tx_dropped: inc(n.tx_dropped, o.tx_dropped),
            };
            let _ = s.net.push(c);
        }
        for (i, name) in layout.disks.iter().enumerate() {
            let (Some(n), Some(o)) = (
                find(&r.disk, name, |x| &x.name),
                find(&p.disk, name, |x| &x.name),
            ) else {
                continue;
            };
            let c = wire::DiskCounters {
                disk: u8::try_from(i).unwrap_or(u8::MAX),
                reads: inc(n.reads, o.reads),
                read_sectors: inc(n.read_sectors, o.read_sectors),
                writes: inc(n.writes, o.writes),
                write_sectors: inc(n.write_sectors, o.write_sectors),
                io_ms: inc(n.io_ms, o.io_ms),
            };
            let _ = s.disk.push(c);
        }
        Some(s)
    }
}

fn find<'a, T>(items: &'a [T], name: &str, key: impl Fn(&T) -> &String) -> Option<&'a T> {
    items.iter().find(|x| key(x) == name)
}
