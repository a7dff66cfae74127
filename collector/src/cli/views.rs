//! What the admin commands print: readable tables by default, JSON for
//! machines. Presentation only; the data comes from `store`.

use serde_json::{json, Value};

use crate::alert::{rfc3339, Alert};
use crate::store::Device;

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

fn device_json(d: &Device) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "model": d.model,
        "state": d.state.name(),
        "public_key": d.public_key,
        "enrolled": rfc3339(d.created_ms),
        "last_seen": d.last_seen_ms.map(rfc3339),
        "frames_received": d.frames_received,
        "open_alerts": d.open_alerts,
        "boot": d.track.as_ref().map(|t| t.boot),
        "acked_seq": d.track.as_ref().and_then(|t| t.acked),
    })
}

pub fn devices(devices: &[Device], as_json: bool) {
    if as_json {
        out!(
            "{}",
            Value::Array(devices.iter().map(device_json).collect())
        );
        return;
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.model.clone(),
                d.state.name().to_string(),
                d.last_seen_ms.map_or_else(|| "never".into(), rfc3339),
                d.frames_received.to_string(),
                d.open_alerts.to_string(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "MODEL",
                "STATE",
                "LAST SEEN",
                "FRAMES",
                "OPEN ALERTS"
            ],
            &rows
        )
    );
}

/// CPU busy share of a sample, percent.
pub fn cpu_busy(s: &Value) -> Option<f64> {
    let c = s.get("cpu")?;
    let f = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let idle = f("idle") + f("iowait");
    let total = ["user", "nice", "system", "irq", "softirq", "steal"]
        .iter()
        .map(|k| f(k))
        .sum::<f64>()
        + idle;
    (total > 0.0).then(|| 100.0 * (total - idle) / total)
}

pub fn sample_line(s: &Value) -> String {
    let mem = s.get("memory");
    let m = |k: &str| {
        mem.and_then(|m| m.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (mut rx, mut tx) = (0u64, 0u64);
    for n in s
        .get("network")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if n.get("iface").and_then(Value::as_str) == Some("lo") {
            continue;
        }
        rx += n.get("rx_bytes").and_then(Value::as_u64).unwrap_or(0);
        tx += n.get("tx_bytes").and_then(Value::as_u64).unwrap_or(0);
    }
    let secs = s
        .get("interval_ms")
        .and_then(Value::as_f64)
        .unwrap_or(1000.0)
        .max(1.0)
        / 1000.0;
    format!(
        "{}  cpu {:5.1} %  mem avail {} / {} MiB  net rx {:.1} KiB/s tx {:.1} KiB/s  procs {}",
        s.get("time").and_then(Value::as_str).unwrap_or("-"),
        cpu_busy(s).unwrap_or(0.0),
        m("available_kib") / 1024,
        m("total_kib") / 1024,
        rx as f64 / 1024.0 / secs,
        tx as f64 / 1024.0 / secs,
        s.get("processes").and_then(Value::as_u64).unwrap_or(0),
    )
}

pub fn device(
    d: &Device,
    latest: Option<&Value>,
    alerts: &[Alert],
    baseline: &Value,
    as_json: bool,
) {
    if as_json {
        let mut v = device_json(d);
        v["baseline"] = baseline.clone();
        v["inventory"] = d.hello.clone().unwrap_or(Value::Null);
        v["latest_sample"] = latest.cloned().unwrap_or(Value::Null);
        v["alerts"] = Value::Array(alerts.iter().map(Alert::to_json).collect());
        out!("{v}");
        return;
    }
    out!("device     {}", d.id);
    out!("name       {}", d.name);
    out!("model      {}", d.model);
    out!("state      {}", d.state.name());
    out!("key        {}", d.public_key);
    out!("enrolled   {}", rfc3339(d.created_ms));
    out!(
        "last seen  {}",
        d.last_seen_ms.map_or_else(|| "never".into(), rfc3339)
    );
    out!("frames     {}", d.frames_received);
    out!("baseline   {}", baseline_line(baseline));
    if let Some(h) = &d.hello {
        let f = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        out!(
            "host       {} ({}, {})",
            f("hostname"),
            f("os_release"),
            f("arch")
        );
        out!(
            "kernel     {} (booted {})",
            f("kernel_release"),
            f("boot_time")
        );
        out!("agent      {}", f("agent_version"));
        let ifaces: Vec<String> = h
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|i| {
                let name = i.get("name").and_then(Value::as_str).unwrap_or("");
                match i.get("mac").and_then(Value::as_str) {
                    Some(m) => format!("{name} {m}"),
                    None => name.to_string(),
                }
            })
            .collect();
        out!("interfaces {}", ifaces.join(", "));
    }
    match latest {
        Some(s) => out!("latest     {}", sample_line(s)),
        None => out!("latest     no samples yet"),
    }
    out!("open alerts {}", alerts.len());
    if !alerts.is_empty() {
        alert_table(alerts);
    }
}

fn alert_table(alerts: &[Alert]) {
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.severity.clone(),
                a.state.clone(),
                a.rule.clone(),
                match &a.device_name {
                    Some(n) if !n.is_empty() => n.clone(),
                    _ if a.device.is_empty() => "-".into(),
                    _ => a.device.clone(),
                },
                rfc3339(a.last_seen_ms),
                a.count.to_string(),
                a.evidence
                    .get("seen")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "ID",
                "SEVERITY",
                "STATE",
                "RULE",
                "DEVICE",
                "LAST SEEN",
                "COUNT",
                "SEEN"
            ],
            &rows
        )
    );
}

pub fn alerts(alerts: &[Alert], as_json: bool) {
    if as_json {
        out!(
            "{}",
            Value::Array(alerts.iter().map(Alert::to_json).collect())
        );
    } else if alerts.is_empty() {
        out!("no alerts");
    } else {
        alert_table(alerts);
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One line: the phase and what to do next.
fn baseline_line(b: &Value) -> String {
    let f = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
    match f("phase") {
        "baselining" => format!("baselining since {}, closes {}", f("started"), f("closes")),
        "review" => format!(
            "waiting for review since {} (baseline show, then baseline approve)",
            f("closed")
        ),
        "monitoring" => format!("monitoring since {} ({})", f("approved"), f("source")),
        _ => "none".into(),
    }
}

/// `baseline show`: what was learned, per metric with the alert limits.
pub fn baseline(d: &Device, b: &Value, as_json: bool) {
    if as_json {
        let mut v = b.clone();
        v["device"] = Value::String(d.id.clone());
        v["name"] = Value::String(d.name.clone());
        v["model"] = Value::String(d.model.clone());
        out!("{v}");
        return;
    }
    let f = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    out!(
        "device     {} ({}{})",
        d.id,
        d.name,
        if d.model.is_empty() {
            String::new()
        } else {
            format!(", model {}", d.model)
        }
    );
    out!("phase      {}", baseline_line(b));
    out!("source     {}", f("source"));
    out!("learned    {} to {}", f("learned_from"), f("learned_to"));
    if b.get("preview").and_then(Value::as_bool) == Some(true) {
        out!("           (still learning: the metric ranges below are a preview from the samples so far)");
    }
    let n = |v: Option<&Value>| {
        v.and_then(Value::as_f64)
            .map_or_else(|| "-".into(), crate::detect::baseline::num)
    };
    // A metric `detect.unwatched_metrics` names has no alert limits.
    let alerted = |m: &Value, limit: &str| {
        if m.get("alerted").and_then(Value::as_bool) == Some(false) {
            "unwatched".to_string()
        } else {
            n(m.get(limit))
        }
    };
    let rows: Vec<Vec<String>> = b
        .get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                m.get("metric")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                m.get("unit")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                n(m.get("samples")),
                n(m.get("min")),
                n(m.get("median")),
                n(m.get("max")),
                alerted(m, "alert_below"),
                alerted(m, "alert_above"),
                m.get("confidence")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string(),
                m.get("daily_cycle")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string(),
            ]
        })
        .collect();
    out!("");
    if rows.is_empty() {
        out!("metrics    none learned yet");
    } else {
        out!(
            "{}",
            table(
                &[
                    "METRIC",
                    "UNIT",
                    "SAMPLES",
                    "MIN",
                    "MEDIAN",
                    "MAX",
                    "ALERT BELOW",
                    "ALERT ABOVE",
                    "CONFIDENCE",
                    "DAILY CYCLE"
                ],
                &rows
            )
        );
        for note in review_notes(b) {
            out!("note: {note}");
        }
    }
    for (key, title) in [
        ("listeners", "listening"),
        ("outbound", "outbound"),
        ("inbound", "inbound"),
    ] {
        let items: Vec<String> = b
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                let procs: Vec<&str> = e
                    .get("processes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .collect();
                format!(
                    "{} ({})",
                    e.get("endpoint").and_then(Value::as_str).unwrap_or(""),
                    procs.join(", ")
                )
            })
            .collect();
        out!(
            "{title:<10} {}",
            if items.is_empty() {
                "none".into()
            } else {
                items.join("; ")
            }
        );
    }
    let list = |k: &str| -> String {
        match b.get(k) {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            Some(Value::Object(o)) if !o.is_empty() => o
                .iter()
                .map(|(k, v)| format!("{k} v{v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".into(),
        }
    };
    out!("processes  {}", list("processes"));
    out!("kernels    {}", list("kernels"));
    out!("manifests  {}", list("manifests"));
    out!(
        "reboots    {}{}",
        b.get("reboots").and_then(Value::as_u64).unwrap_or(0),
        b.get("shortest_boot_interval_s")
            .and_then(Value::as_u64)
            .map_or_else(String::new, |s| format!(" (shortest interval {s} s)"))
    );
}

pub fn export(d: &Device, rows: &[Value], format: &str) {
    if format == "json" {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["device"] = Value::String(d.id.clone());
                r
            })
            .collect();
        out!("{}", Value::Array(out));
        return;
    }
    let cpu = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mem = [
        "total_kib",
        "available_kib",
        "swap_total_kib",
        "swap_used_kib",
    ];
    let net = [
        "rx_bytes",
        "rx_packets",
        "rx_errors",
        "rx_dropped",
        "tx_bytes",
        "tx_packets",
        "tx_errors",
        "tx_dropped",
    ];
    let mut header = vec![
        "device".to_string(),
        "time".into(),
        "interval_ms".into(),
        "uptime_s".into(),
    ];
    header.extend(cpu.iter().map(|c| format!("cpu_{c}")));
    header.extend(mem.iter().map(|m| format!("mem_{m}")));
    header.extend(["load1", "load5", "load15", "processes", "iface"].map(String::from));
    header.extend(net.iter().map(|n| n.to_string()));
    out!("{}", header.join(","));
    for r in rows {
        let g = |v: Option<&Value>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut base = vec![
            csv(&d.id),
            csv(r.get("time").and_then(Value::as_str).unwrap_or("")),
            g(r.get("interval_ms")),
            g(r.get("uptime_s")),
        ];
        base.extend(cpu.iter().map(|c| g(r.get("cpu").and_then(|x| x.get(*c)))));
        base.extend(
            mem.iter()
                .map(|m| g(r.get("memory").and_then(|x| x.get(*m)))),
        );
        for i in 0..3 {
            base.push(g(r.get("load").and_then(|l| l.get(i))));
        }
        base.push(g(r.get("processes")));
        let ifaces = r
            .get("network")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ifaces.is_empty() {
            // Empty iface and counter columns.
            out!("{}{}", base.join(","), ",".repeat(net.len() + 1));
            continue;
        }
        // One line per interface; the sample's other columns repeat.
        for n in ifaces {
            let mut line = base.clone();
            line.push(csv(n.get("iface").and_then(Value::as_str).unwrap_or("")));
            line.extend(net.iter().map(|k| g(n.get(*k))));
            out!("{}", line.join(","));
        }
    }
}

fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The access record: one line per session, oldest first.
pub fn access(rows: &[crate::store::access::Row], format: &str, now_ms: u64) {
    match format {
        "json" => {
            out!(
                "{}",
                Value::Array(rows.iter().map(|r| r.to_json(now_ms)).collect())
            );
        }
        "csv" => {
            out!("device,device_name,session,kind,user,by_user,remote,remote_port,terminal,process,command,started,ended,duration_s,verdict,violations,alerts");
            for r in rows {
                let j = r.to_json(now_ms);
                out!(
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    csv(&r.device),
                    csv(&r.device_name),
                    csv(j["session"].as_str().unwrap_or("")),
                    csv(&r.kind),
                    csv(&r.user),
                    csv(&r.by_user),
                    csv(r.remote.as_deref().unwrap_or("")),
                    r.remote_port.map(|p| p.to_string()).unwrap_or_default(),
                    csv(&r.terminal),
                    csv(&r.process),
                    csv(&r.command),
                    rfc3339(r.started_ms),
                    r.ended_ms.map(rfc3339).unwrap_or_default(),
                    j["duration_s"],
                    csv(&r.verdict),
                    csv(&r.violations.join("; ")),
                    csv(&r
                        .alerts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")),
                );
            }
        }
        _ => {
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let who = if r.by_user.is_empty() {
                        r.user.clone()
                    } else {
                        format!("{} (by {})", r.user, r.by_user)
                    };
                    let from = match (&r.remote, r.remote_port) {
                        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
                        (Some(a), Some(p)) => format!("{a}:{p}"),
                        (Some(a), None) => a.clone(),
                        (None, _) => "-".into(),
                    };
                    let via = if r.command.is_empty() {
                        r.process.clone()
                    } else {
                        format!("{} {}", r.process, r.command)
                    };
                    let end = r.ended_ms.unwrap_or(now_ms);
                    vec![
                        if r.device_name.is_empty() {
                            r.device.clone()
                        } else {
                            r.device_name.clone()
                        },
                        who,
                        r.kind.clone(),
                        from,
                        r.terminal.clone(),
                        via,
                        rfc3339(r.started_ms),
                        r.ended_ms.map_or_else(|| "open".into(), rfc3339),
                        duration(end.saturating_sub(r.started_ms) / 1000),
                        match (r.verdict.as_str(), r.overstay) {
                            ("allowed", true) => "allowed, overstayed".into(),
                            (v, _) => v.to_string(),
                        },
                        if r.alerts.is_empty() {
                            "-".into()
                        } else {
                            r.alerts
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "DEVICE", "USER", "KIND", "FROM", "TTY", "VIA", "STARTED", "ENDED",
                        "DURATION", "VERDICT", "ALERTS"
                    ],
                    &table_rows
                )
            );
            // Why each session outside the policy is, under the table.
            for r in rows
                .iter()
                .filter(|r| !r.violations.is_empty() || !r.end_note.is_empty())
            {
                let who = if r.device_name.is_empty() {
                    &r.device
                } else {
                    &r.device_name
                };
                for v in &r.violations {
                    out!("  {who} {} {}: {v}", r.user, rfc3339(r.started_ms));
                }
                if !r.end_note.is_empty() {
                    out!(
                        "  {who} {} {}: {}",
                        r.user,
                        rfc3339(r.started_ms),
                        r.end_note
                    );
                }
            }
        }
    }
}

/// The review notes of every metric in a baseline summary.
pub fn review_notes(b: &Value) -> Vec<String> {
    b.get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("notes").and_then(Value::as_array))
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_csv_quotes() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv("plain"), "plain");
    }

    #[test]
    fn cpu_busy_counts_iowait_as_idle() {
        let s = json!({"cpu": {"user": 30, "system": 10, "idle": 50, "iowait": 10}});
        assert_eq!(cpu_busy(&s), Some(40.0));
        assert_eq!(cpu_busy(&json!({"cpu": {}})), None);
    }
}
