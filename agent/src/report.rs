//! `vigil-agent sample` output: one reading as readable text or as JSON.
//! Counters are cumulative, as the kernel (and node_exporter) report them.

use serde_json::json;

use crate::sample::reading::Reading;
use crate::sample::Issue;

/// Clock ticks per second for /proc/stat (USER_HZ; 100 on every Linux ABI).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

pub fn json(r: &Reading, issues: &[Issue]) -> String {
    let hz = ticks_per_second();
    let cpu = r.cpu.map(|c| {
        json!({
            "user_seconds": c.user as f64 / hz, "nice_seconds": c.nice as f64 / hz,
            "system_seconds": c.system as f64 / hz, "idle_seconds": c.idle as f64 / hz,
            "iowait_seconds": c.iowait as f64 / hz, "irq_seconds": c.irq as f64 / hz,
            "softirq_seconds": c.softirq as f64 / hz, "steal_seconds": c.steal as f64 / hz,
            "cpus": r.cpus,
        })
    });
    let load = r.load_centi.map(|l| l.map(|v| v as f64 / 100.0));
    let pressure = r.pressure.map(|[c, m, i]| {
        json!({
            "cpu_some_us": c.some_us, "memory_some_us": m.some_us, "memory_full_us": m.full_us,
            "io_some_us": i.some_us, "io_full_us": i.full_us,
        })
    });
    let v = json!({
        "time_ms": r.time_ms,
        "cpu": cpu,
        "memory": r.memory,
        "pressure": pressure,
        "network": r.network,
        "disk": r.disk,
        "load": load,
        "processes": r.processes,
        "uptime_s": r.uptime_s,
        "boot_time_s": r.boot_time_s,
        "issues": issues.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    v.to_string()
}

pub fn text(r: &Reading) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let hz = ticks_per_second();
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    if let Some(c) = r.cpu {
        let _ = writeln!(
            o,
            "cpu       {} CPUs; since boot: user {:.0} s, system {:.0} s, idle {:.0} s, iowait {:.0} s, steal {:.0} s",
            r.cpus,
            c.user as f64 / hz,
            c.system as f64 / hz,
            c.idle as f64 / hz,
            c.iowait as f64 / hz,
            c.steal as f64 / hz
        );
    }
    let m = &r.memory;
    let swap_used = m
        .swap_total_kib
        .zip(m.swap_free_kib)
        .map(|(t, f)| t.saturating_sub(f));
    let _ = writeln!(
        o,
        "memory    total {}, available {}, swap {} of {}",
        mib(m.total_kib),
        mib(m.available_kib),
        mib(swap_used),
        mib(m.swap_total_kib)
    );
    if let Some(l) = r.load_centi {
        let _ = writeln!(
            o,
            "load      {:.2} {:.2} {:.2}",
            l[0] as f64 / 100.0,
            l[1] as f64 / 100.0,
            l[2] as f64 / 100.0
        );
    }
    let _ = writeln!(
        o,
        "processes {}   uptime {} s",
        r.processes.map_or("?".into(), |p| p.to_string()),
        r.uptime_s.map_or("?".into(), |u| u.to_string())
    );
    for n in &r.network {
        let _ = writeln!(
            o,
            "net       {:<12} rx {} B / {} pkts ({} err, {} drop)   tx {} B / {} pkts ({} err, {} drop)",
            n.name, n.rx_bytes, n.rx_packets, n.rx_errors, n.rx_dropped, n.tx_bytes, n.tx_packets, n.tx_errors, n.tx_dropped
        );
    }
    for d in &r.disk {
        let _ = writeln!(
            o,
            "disk      {:<12} {} reads ({} sectors), {} writes ({} sectors), {} ms busy",
            d.name, d.reads, d.read_sectors, d.writes, d.write_sectors, d.io_ms
        );
    }
    o
}
