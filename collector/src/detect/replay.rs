//! Offline replay of one recorded series through the live detector
//! (`vigil-collector detect --csv FILE`): learn a profile from the first
//! rows exactly as during a baseline, then score every later row with the
//! same `detect::Watch` the collector runs. Reads `timestamp,value` files
//! (the NAB layout) and the collector's own `export --format csv`. Rows are
//! taken in file order, so repeated or unordered timestamps are fine, but
//! every timestamp must parse (the daily and weekly patterns use them).

use std::io::Write;

use vigil_protocol::sample::{CpuTicks, Memory, NetCounters, Sample};

use crate::detect::metric::{self, Kind};
use crate::detect::score::{Learner, Tuning, Watch};
use crate::store::Layout;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
    #[error("writing the result: {0}")]
    Write(#[from] std::io::Error),
}

pub struct Options {
    /// Metric key for export files (`cpu.busy`, `net.eth0.tx_bytes`, ...);
    /// for `timestamp,value` files the kind whose floor and sides apply.
    pub metric: Option<String>,
    /// Rows to learn from; default `default_learn_rows`.
    pub learn: Option<usize>,
    pub tuning: Tuning,
}

/// Rows a replay learns from when not told: the first 15 % of the series,
/// at most 750 rows (NAB's probationary period, in which a detector's
/// output is not scored).
pub fn default_learn_rows(rows: usize) -> usize {
    (rows * 15 / 100).min(750)
}

#[derive(Debug, PartialEq)]
pub struct Summary {
    pub rows: usize,
    pub learned: usize,
    pub anomalies: usize,
    pub metric: String,
}

/// One row: the timestamp as written, as UTC milliseconds, the value.
type Row = (String, u64, f64);

/// A series as read: its rows, the metric's name and kind.
type Series = (Vec<Row>, String, Kind);

/// Splits one CSV line, honouring double quotes.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The series to replay: (timestamp as written, value).
fn series(path: &str, text: &str, metric: Option<&str>) -> Result<Series, ReplayError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or_else(|| ReplayError::Format {
        path: path.into(),
        message: "empty file: expected a header line (timestamp,value)".into(),
    })?;
    let head: Vec<String> = fields(head.trim_end_matches('\r'))
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| head.iter().position(|h| h == name);
    if let (Some(t), Some(v)) = (col("timestamp"), col("value")) {
        let kind = match metric {
            None => Kind::Value,
            Some(m) => Kind::from_name(m).ok_or_else(|| ReplayError::Format {
                path: path.into(),
                message: format!("--metric {m}: not a metric kind ({})", kind_names()),
            })?,
        };
        let mut out = Vec::new();
        for (i, line) in lines {
            let f = fields(line.trim_end_matches('\r'));
            let row_err = |message: String| ReplayError::Row {
                path: path.into(),
                line: i + 1,
                message,
            };
            let ts = f
                .get(t)
                .ok_or_else(|| row_err("no timestamp column".into()))?;
            let at = time_ms(ts).ok_or_else(|| {
                row_err(format!(
                    "timestamp `{}` is not a date and time (YYYY-MM-DD HH:MM:SS, RFC 3339 or Unix seconds)",
                    ts.trim()
                ))
            })?;
            let raw = f.get(v).ok_or_else(|| row_err("no value column".into()))?;
            let x: f64 = raw
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| row_err(format!("value `{raw}` is not a finite number")))?;
            out.push((ts.trim().to_string(), at, x));
        }
        if out.is_empty() {
            return Err(ReplayError::Format {
                path: path.into(),
                message: "no rows after the header: an empty series".into(),
            });
        }
        return Ok((out, kind.name().to_string(), kind));
    }
    if col("device").is_some() && col("time").is_some() && col("cpu_user").is_some() {
        return export_series(path, &head, lines, metric.unwrap_or("cpu.busy"));
    }
    Err(ReplayError::Format {
        path: path.into(),
        message: "header must name `timestamp` and `value` columns, or be `vigil-collector export --format csv` output".into(),
    })
}

fn kind_names() -> String {
    metric::KINDS
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rebuilds the samples of an export (one line per sample and interface)
/// and takes one metric of each, the way the live collector reads it.
fn export_series<'a>(
    path: &str,
    head: &[String],
    lines: impl Iterator<Item = (usize, &'a str)>,
    key: &str,
) -> Result<Series, ReplayError> {
    let col = |name: &str| head.iter().position(|h| h == name);
    let mut samples: Vec<(String, u64, Sample, Layout)> = Vec::new();
    for (i, line) in lines {
        let f = fields(line.trim_end_matches('\r'));
        let row_err = |message: String| ReplayError::Row {
            path: path.into(),
            line: i + 1,
            message,
        };
        let num = |name: &str| -> Result<u64, ReplayError> {
            let c = col(name).ok_or_else(|| row_err(format!("no `{name}` column")))?;
            let raw = f.get(c).map_or("", |s| s.trim());
            if raw.is_empty() {
                return Ok(0);
            }
            raw.parse()
                .map_err(|_| row_err(format!("{name} `{raw}` is not a whole number")))
        };
        let time = col("time")
            .and_then(|c| f.get(c))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        let at = time_ms(&time)
            .ok_or_else(|| row_err(format!("time `{time}` is not an RFC 3339 date and time")))?;
        let uptime = num("uptime_s")?;
        let same = samples
            .last()
            .is_some_and(|(t, _, s, _)| *t == time && s.uptime_s == uptime);
        if !same {
            let s = Sample {
                interval_ms: num("interval_ms")?,
                uptime_s: uptime,
                cpu: CpuTicks {
                    user: num("cpu_user")?,
                    nice: num("cpu_nice")?,
                    system: num("cpu_system")?,
                    idle: num("cpu_idle")?,
                    iowait: num("cpu_iowait")?,
                    irq: num("cpu_irq")?,
                    softirq: num("cpu_softirq")?,
                    steal: num("cpu_steal")?,
                },
                memory: Memory {
                    total_kib: num("mem_total_kib")?,
                    available_kib: num("mem_available_kib")?,
                    swap_total_kib: num("mem_swap_total_kib")?,
                    swap_used_kib: num("mem_swap_used_kib")?,
                },
                processes: num("processes")?,
                ..Sample::default()
            };
            samples.push((time, at, s, Layout::default()));
        }
        let iface = col("iface").and_then(|c| f.get(c)).map_or("", |s| s.trim());
        if !iface.is_empty() {
            if let Some((_, _, s, layout)) = samples.last_mut() {
                let index = u8::try_from(layout.interfaces.len()).unwrap_or(u8::MAX);
                layout.interfaces.push(iface.to_string());
                let n = NetCounters {
                    iface: index,
                    rx_bytes: num("rx_bytes")?,
                    rx_packets: num("rx_packets")?,
                    rx_errors: num("rx_errors")?,
                    rx_dropped: num("rx_dropped")?,
                    tx_bytes: num("tx_bytes")?,
                    tx_packets: num("tx_packets")?,
                    tx_errors: num("tx_errors")?,
                    tx_dropped: num("tx_dropped")?,
                };
                if s.net.push(n).is_err() {
                    return Err(row_err(
                        "more interfaces in one sample than a device reports".into(),
                    ));
                }
            }
        }
    }
    let mut kind = None;
    let mut out = Vec::new();
    for (time, at, s, layout) in &samples {
        if let Some(r) = metric::readings(s, layout)
            .into_iter()
            .find(|r| r.key == key)
        {
            kind = Some(r.kind);
            out.push((time.clone(), *at, r.value));
        }
    }
    let kind = kind.ok_or_else(|| ReplayError::Format {
        path: path.into(),
        message: format!(
            "--metric {key}: no sample in this export has it (e.g. cpu.busy, mem.available, processes, net.IFACE.tx_bytes)"
        ),
    })?;
    Ok((out, key.to_string(), kind))
}

/// A row's time: `YYYY-MM-DD HH:MM:SS` (NAB), RFC 3339 with or without
/// a fraction (`export`), taken as UTC, or Unix seconds; `None` for
/// anything else.
fn time_ms(ts: &str) -> Option<u64> {
    let ts = ts.trim();
    if !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = ts.parse().ok()?;
        return (secs.is_finite() && secs < 1e13).then_some((secs * 1000.0) as u64);
    }
    let t = if ts.len() == 10 {
        format!("{ts}T00:00:00")
    } else {
        ts.replacen(' ', "T", 1)
    };
    let t = t.strip_suffix('Z').unwrap_or(&t);
    let (secs, frac) = match t.split_once('.') {
        Some((a, f)) => (a, f),
        None => (t, ""),
    };
    let ms = match frac.get(..3.min(frac.len())) {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u64>().ok()? * 10u64.pow(3 - u32::try_from(f.len()).ok()?)
        }
        _ => 0,
    };
    let base = crate::alert::parse_rfc3339(&format!("{secs}Z"))?;
    base.checked_add(ms)
}

/// Replays `path` and writes `timestamp,score,anomaly` lines to `out`.
pub fn run(path: &str, opts: &Options, out: &mut impl Write) -> Result<Summary, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.into(),
        source,
    })?;
    let (rows, metric, kind) = series(path, &text, opts.metric.as_deref())?;
    let t = &opts.tuning;
    let learn = opts.learn.unwrap_or_else(|| default_learn_rows(rows.len()));
    if learn < t.shift_window || learn >= rows.len() {
        return Err(ReplayError::Format {
            path: path.into(),
            message: format!(
                "{} rows: cannot learn from {learn} and score the rest (learning needs at least {} rows and fewer than the series has)",
                rows.len(),
                t.shift_window
            ),
        });
    }
    let mut learner = Learner::new(t);
    let mut watch = None;
    let mut profile = None;
    let mut anomalies = 0;
    writeln!(out, "timestamp,score,anomaly")?;
    for (i, (ts, at, x)) in rows.iter().enumerate() {
        let at = Some(*at);
        if i < learn {
            learner.learn_at(*x, at);
            writeln!(out, "{ts},0.0000,0")?;
            continue;
        }
        let p =
            match &profile {
                Some(p) => p,
                None => {
                    watch = Some(Watch::after(Some(&learner)));
                    profile.insert(learner.profile(kind.floor_for(learner.max())).ok_or_else(
                        || ReplayError::Format {
                            path: path.into(),
                            message: "nothing to learn from".into(),
                        },
                    )?)
                }
            };
        let Some(w) = watch.as_mut() else { continue };
        let v = w.score(p, t, kind.sides(), *x, at);
        anomalies += usize::from(v.anomaly());
        writeln!(out, "{ts},{:.4},{}", v.score, u8::from(v.anomaly()))?;
    }
    out.flush()?;
    Ok(Summary {
        rows: rows.len(),
        learned: learn,
        anomalies,
        metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn opts() -> Options {
        Options {
            metric: None,
            learn: None,
            tuning: Tuning::default(),
        }
    }

    #[test]
    fn a_series_with_one_jump_flags_its_first_row_only() {
        let mut text = String::from("timestamp,value\n");
        for i in 0..400 {
            let v = if i >= 300 {
                90.0
            } else {
                10.0 + (i % 5) as f64
            };
            // Repeated timestamps are kept in file order.
            text.push_str(&format!("2024-01-01 00:{:02}:00,{v}\n", (i / 2) % 60));
        }
        let f = write(&text);
        let mut out = Vec::new();
        let path = f.path().to_str().expect("utf-8 path");
        let s = run(path, &opts(), &mut out).expect("replay");
        assert_eq!(s.rows, 400);
        assert_eq!(s.learned, 60);
        assert_eq!(s.anomalies, 1);
        let out = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 401);
        assert_eq!(lines[0], "timestamp,score,anomaly");
        assert!(lines[301].ends_with(",1"), "{}", lines[301]);
        assert!(lines[300].ends_with(",0"));
        assert!(lines[301].starts_with("2024-01-01 00:30:00,"));
    }

    #[test]
    fn bad_input_is_named_with_its_line() {
        let f = write("timestamp,value\n2024-01-01,1\n2024-01-02,abc\n");
        let e =
            run(f.path().to_str().expect("path"), &opts(), &mut Vec::new()).expect_err("bad row");
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(e.to_string().contains("`abc`"), "{e}");
        let f = write("when,what\n1,2\n");
        let e = run(f.path().to_str().expect("path"), &opts(), &mut Vec::new())
            .expect_err("bad header");
        assert!(e.to_string().contains("timestamp"), "{e}");
        let f = write("timestamp,value\n1,2\n");
        let e =
            run(f.path().to_str().expect("path"), &opts(), &mut Vec::new()).expect_err("too short");
        assert!(e.to_string().contains("cannot learn"), "{e}");
    }

    #[test]
    fn every_bad_input_is_an_error_naming_the_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("", "empty file"),
            ("value,timestamp\n", "no rows after the header"),
            ("timestamp,value\n", "no rows after the header"),
            ("when,what\n1,2\n", "header must name"),
            (
                "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,abc\n",
                "line 3: value `abc`",
            ),
            (
                "timestamp,value\n2024-01-01 00:00:00,NaN\n",
                "line 2: value `NaN` is not a finite number",
            ),
            (
                "timestamp,value\n2024-01-01 00:00:00,inf\n",
                "line 2: value `inf`",
            ),
            (
                "timestamp,value\n2024-01-01 00:00:00,-infinity\n",
                "line 2: value `-infinity`",
            ),
            (
                "timestamp,value\n2024-01-01 00:00:00,1\nyesterday,2\n",
                "line 3: timestamp `yesterday`",
            ),
            (
                "timestamp,value\n2024-13-01 00:00:00,1\n",
                "line 2: timestamp `2024-13-01 00:00:00`",
            ),
            (
                "timestamp,value\n2024-01-01 00:00:00\n",
                "line 2: no value column",
            ),
        ];
        for (text, want) in cases {
            let f = write(text);
            let path = f.path().to_str().expect("path");
            let e = run(path, &opts(), &mut Vec::new()).expect_err(text);
            let e = e.to_string();
            assert!(e.starts_with(path), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Unix seconds and RFC 3339 parse; repeated times are fine.
        assert_eq!(time_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(time_ms("2024-01-01T00:00:00.250Z"), Some(1_704_067_200_250));
        assert_eq!(time_ms("2024-01-01 00:00:00"), Some(1_704_067_200_000));
    }

    #[test]
    fn export_csv_is_read_one_sample_per_time() {
        let mut text = String::from("device,time,interval_ms,uptime_s,cpu_user,cpu_nice,cpu_system,cpu_idle,cpu_iowait,cpu_irq,cpu_softirq,cpu_steal,mem_total_kib,mem_available_kib,mem_swap_total_kib,mem_swap_used_kib,load1,load5,load15,processes,iface,rx_bytes,rx_packets,rx_errors,rx_dropped,tx_bytes,tx_packets,tx_errors,tx_dropped\n");
        for i in 0..200u64 {
            let user = if i >= 150 { 190 } else { 10 };
            let time = format!("2024-01-01T00:{:02}:{:02}.000Z", i / 60, i % 60);
            for (iface, tx) in [("lo", 5), ("eth0", 1000 + i)] {
                text.push_str(&format!(
                    "abcd,{time},1000,{i},{user},0,0,{},0,0,0,0,1000,500,0,0,1,1,1,50,{iface},0,0,0,0,{tx},0,0,0\n",
                    200 - user
                ));
            }
        }
        let f = write(&text);
        let path = f.path().to_str().expect("path");
        let mut out = Vec::new();
        let s = run(path, &opts(), &mut out).expect("cpu replay");
        assert_eq!((s.rows, s.metric.as_str()), (200, "cpu.busy"));
        // The jump opens a deviation at once; the shift that follows is
        // the same episode.
        assert_eq!(s.anomalies, 1);
        let out = String::from_utf8(out).expect("utf-8");
        let first = out.lines().position(|l| l.ends_with(",1"));
        assert_eq!(first, Some(151), "header + 150 rows before the jump");
        let o = Options {
            metric: Some("net.eth0.tx_bytes".into()),
            ..opts()
        };
        let s = run(path, &o, &mut Vec::new()).expect("tx replay");
        assert_eq!((s.rows, s.anomalies), (200, 0));
        let o = Options {
            metric: Some("net.wlan0.tx_bytes".into()),
            ..opts()
        };
        assert!(run(path, &o, &mut Vec::new()).is_err());
    }
}
