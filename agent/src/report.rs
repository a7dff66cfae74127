//! `vigil-agent sample` output: one reading as readable text or as JSON.
//! Counters are cumulative, as the kernel (and node_exporter) report them.

use crate::sample::reading::Reading;
use crate::sample::Issue;

/// Clock ticks per second for /proc/stat (USER_HZ; 100 on every Linux ABI).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// A JSON string literal.
pub(crate) fn string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// `{"k": v, ...}` from already-encoded values.
pub(crate) fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", string(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// The reading as one JSON object (keys documented in agent/README.md).
pub fn json(r: &Reading, issues: &[Issue]) -> String {
    let hz = ticks_per_second();
    let secs = |t: u64| format!("{}", t as f64 / hz);
    let cpu = r.cpu.map_or_else(
        || "null".to_string(),
        |c| {
            object(&[
                ("user_seconds", secs(c.user)),
                ("nice_seconds", secs(c.nice)),
                ("system_seconds", secs(c.system)),
                ("idle_seconds", secs(c.idle)),
                ("iowait_seconds", secs(c.iowait)),
                ("irq_seconds", secs(c.irq)),
                ("softirq_seconds", secs(c.softirq)),
                ("steal_seconds", secs(c.steal)),
                ("cpus", r.cpus.to_string()),
            ])
        },
    );
    let m = &r.memory;
    let b = |v: Option<u64>| opt(v.map(|k| k * 1024));
    let swap_used = m
        .swap_total_kib
        .zip(m.swap_free_kib)
        .map(|(t, f)| t.saturating_sub(f));
    let memory = object(&[
        ("total_bytes", b(m.total_kib)),
        ("available_bytes", b(m.available_kib)),
        ("swap_total_bytes", b(m.swap_total_kib)),
        ("swap_used_bytes", b(swap_used)),
    ]);
    let pressure = r.pressure.map_or_else(
        || "null".to_string(),
        |[c, mem, io]| {
            object(&[
                ("cpu_some_us", c.some_us.to_string()),
                ("memory_some_us", mem.some_us.to_string()),
                ("memory_full_us", opt(mem.full_us)),
                ("io_some_us", io.some_us.to_string()),
                ("io_full_us", opt(io.full_us)),
            ])
        },
    );
    let network: Vec<String> = r
        .network
        .iter()
        .map(|n| {
            object(&[
                ("name", string(&n.name)),
                ("rx_bytes", n.rx_bytes.to_string()),
                ("rx_packets", n.rx_packets.to_string()),
                ("rx_errors", n.rx_errors.to_string()),
                ("rx_dropped", n.rx_dropped.to_string()),
                ("tx_bytes", n.tx_bytes.to_string()),
                ("tx_packets", n.tx_packets.to_string()),
                ("tx_errors", n.tx_errors.to_string()),
                ("tx_dropped", n.tx_dropped.to_string()),
            ])
        })
        .collect();
    let disk: Vec<String> = r
        .disk
        .iter()
        .map(|d| {
            object(&[
                ("name", string(&d.name)),
                ("reads", d.reads.to_string()),
                ("read_sectors", d.read_sectors.to_string()),
                ("writes", d.writes.to_string()),
                ("write_sectors", d.write_sectors.to_string()),
                ("io_ms", d.io_ms.to_string()),
            ])
        })
        .collect();
    let load = r.load_centi.map_or_else(
        || "null".to_string(),
        |l| {
            format!(
                "[{},{},{}]",
                l[0] as f64 / 100.0,
                l[1] as f64 / 100.0,
                l[2] as f64 / 100.0
            )
        },
    );
    let issues: Vec<String> = issues.iter().map(|i| string(&i.to_string())).collect();
    object(&[
        ("time_ms", r.time_ms.to_string()),
        ("cpu", cpu),
        ("memory", memory),
        ("pressure", pressure),
        ("network", format!("[{}]", network.join(","))),
        ("disk", format!("[{}]", disk.join(","))),
        ("load", load),
        ("processes", opt(r.processes)),
        ("uptime_s", opt(r.uptime_s)),
        ("boot_time_s", opt(r.boot_time_s)),
        ("issues", format!("[{}]", issues.join(","))),
    ])
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

/// A finding as JSON: `kind`, `path` (escaped like the manifest writes it),
/// `detail` (the readable line).
pub fn finding_json(f: &crate::manifest::Found) -> String {
    object(&[
        ("kind", string(crate::manifest::kind_name(&f.kind))),
        (
            "path",
            string(&vigil_protocol::manifest::display_path(&f.path)),
        ),
        ("detail", string(&crate::manifest::describe(f))),
    ])
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(","))
}

/// `vigil-agent check --json`: integrity reports, posture results, errors.
pub fn outcome_json(o: &crate::guard::Outcome) -> String {
    let reports = list(o.reports.iter().map(|r| {
        object(&[
            ("source", string(&r.source.display().to_string())),
            ("class", string(r.manifest.class.name())),
            ("issuer", string(&r.manifest.issuer)),
            ("scope", string(&r.manifest.scope)),
            ("version", r.manifest.version.to_string()),
            ("checked", r.checked.to_string()),
            ("findings", list(r.findings.iter().map(finding_json))),
        ])
    }));
    let posture = list(o.posture.iter().map(|c| {
        object(&[
            ("id", string(c.id)),
            ("title", string(&c.title)),
            ("status", string(crate::posture::status_name(c.status))),
            ("evidence", string(&c.evidence)),
        ])
    }));
    object(&[
        ("integrity", reports),
        ("posture", posture),
        ("errors", list(o.errors.iter().map(|e| string(e)))),
        (
            "clean",
            (!o.has_findings() && o.errors.is_empty()).to_string(),
        ),
    ])
}

/// `vigil-agent check` for people.
pub fn outcome_text(o: &crate::guard::Outcome) -> String {
    let mut s = String::new();
    for r in &o.reports {
        s.push_str(&format!(
            "integrity {} ({} {} {} version {}): {} entries, {} findings\n",
            r.source.display(),
            r.manifest.class.name(),
            r.manifest.issuer,
            r.manifest.scope,
            r.manifest.version,
            r.checked,
            r.findings.len()
        ));
        for f in &r.findings {
            s.push_str(&format!("  {}\n", crate::manifest::describe(f)));
        }
    }
    for c in &o.posture {
        s.push_str(&format!(
            "posture {:<5} {:<24} {}: {}\n",
            crate::posture::status_name(c.status),
            c.id,
            c.title,
            c.evidence
        ));
    }
    for e in &o.errors {
        s.push_str(&format!("error {e}\n"));
    }
    s
}
