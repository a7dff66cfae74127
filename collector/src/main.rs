//! `vigil-collector`: the hospital-side collector. Parses the command line
//! and runs one command: `serve`, the admin commands (which work on the
//! same state dir while `serve` runs), or `quickstart`. Never depends on
//! the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use lexopt::prelude::*;
use serde_json::{json, Value};

/// `println!` for command output: a closed pipe (`| head`) ends the
/// command quietly instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::print_line(format_args!($($t)*))
    };
}

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{args}").is_err() {
        std::process::exit(0);
    }
}

mod access;
mod alert;
mod cli;
mod clock;
mod config;
mod detect;
mod ingest;
mod logger;
mod metrics;
mod serve;
mod sink;
mod store;

use config::{Config, Sink, Transport};
use store::{DeviceState, Store};

const USAGE: &str = "\
vigil-collector: Vigil's hospital-side collector

usage:
  vigil-collector serve [--config FILE] [options]     receive, verify, archive, alert
  vigil-collector quickstart [--duration-s N]          a collector and a local agent, live view
  vigil-collector enroll --key KEY --name NAME [--model MODEL]
                                                       approve a device ahead of time
  vigil-collector approve DEVICE | revoke DEVICE
  vigil-collector devices [--json]
  vigil-collector device DEVICE [--json]
  vigil-collector alerts [--open] [--device D] [--severity S] [--json]
  vigil-collector ack ALERT | resolve ALERT
  vigil-collector export --device D [--from T] [--to T] [--format csv|json]
  vigil-collector audit [--json]                      re-verify every stored frame
  vigil-collector admin-log [--json]                  who changed what
  vigil-collector baseline show DEVICE [--json]        what the device's baseline learned
  vigil-collector baseline close|approve|reset DEVICE  end learning | approve | learn again
  vigil-collector baseline export DEVICE > FILE        the approved baseline as JSON
  vigil-collector baseline import --model MODEL FILE   one baseline for every device of MODEL
  vigil-collector access [--device D] [--from T] [--to T] [--json|--csv]
                                                       the access record: every session
  vigil-collector access open --device D --for 2h --reason \"...\"
                                                       an access window (audited)
  vigil-collector access close --device D | access windows [--device D]
  vigil-collector detect --csv FILE [--metric KIND] [--learn N] [tuning]
                                                       replay a recorded series through
                                                       the detector: timestamp,score,anomaly
  vigil-collector --version | --help

Every command takes --state-dir DIR (default /var/lib/vigil-collector) or
--config FILE (its state_dir). DEVICE is a device id (or a unique prefix of
at least 4 digits) or a device name. T is YYYY-MM-DD or
YYYY-MM-DDTHH:MM:SSZ (UTC).

serve options (each overrides the same setting in --config):
  --listen ADDR               TLS 1.3 listener (default 0.0.0.0:7443)
  --tls-cert FILE --tls-key FILE
                              PEM certificate chain and key (default: a
                              self-signed Ed25519 certificate in the state dir)
  --plain-listen ADDR --insecure-plaintext
                              plain TCP (lab use only)
  --no-tls                    no TLS listener (serial or plain only)
  --serial DEVICE[:BAUD]      read a serial port (repeatable; default 115200)
  --metrics-listen ADDR       Prometheus metrics on http://ADDR/metrics
  --retention-days N          raw samples kept N days (default 30), then
                              per-minute aggregates
  --rollup-every-s N          how often older samples are rolled up (default
                              3600, and once at start)
  --silence-s N               silence alert after N s (default 300)
  --loss-grace-s N            unexplained sequence hole alert (default 120)
  --max-connections N  --frames-per-s N  --idle-timeout-s N
  --handshake-timeout-s N  --unknown-per-minute N  --max-pending N
  --sink-json PATH            JSON lines to PATH (- for stdout)
  --sink-syslog ADDR[/tcp]    RFC 5424 syslog (UDP by default)
  --sink-cef ADDR[/tcp]|PATH  CEF over syslog, or to a file
  --baseline-period-s N       a new device's baseline closes for review after
                              N s (default 604800, 7 days)
  --internal-prefix P         the hospital's networks (repeatable; replaces
                              the default RFC 1918, loopback, link-local, ULA)
  --allow-outbound E          outbound endpoint never alerted as new (repeatable;
                              PREFIX, PREFIX:PORT or [V6PREFIX]:PORT)
  --allow-lateral E           remote-admin/file-sharing port allowed towards E
  --unwatched-metric M        a metric learned but never alerted on (repeatable;
                              a name like disk.read_bytes or a prefix like disk.*)

exit codes: 0 ok, 1 audit found problems, 2 usage or runtime error,
78 bad configuration";

/// Errors that carry their own exit code.
#[derive(Debug, thiserror::Error)]
enum Exit {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("")]
    Findings,
}

fn main() -> ExitCode {
    logger::init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit::Findings) => ExitCode::from(1),
            Some(Exit::Config(m)) => {
                eprintln!("vigil-collector: bad configuration: {m}");
                ExitCode::from(78)
            }
            Some(Exit::Usage(m)) => {
                eprintln!("vigil-collector: {m}\n(see vigil-collector --help)");
                ExitCode::from(2)
            }
            None => {
                eprintln!("vigil-collector: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn usage(m: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(Exit::Usage(m.to_string()))
}

/// Options every command understands, plus the rest for the command.
struct Args {
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    json: bool,
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

impl Args {
    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.options.iter().position(|(k, _)| k == name)?;
        self.options.remove(i).1
    }

    fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = self.take(name) {
            out.push(v);
        }
        out
    }

    fn flag(&mut self, name: &str) -> bool {
        match self
            .options
            .iter()
            .position(|(k, v)| k == name && v.is_none())
        {
            Some(i) => {
                self.options.remove(i);
                true
            }
            None => false,
        }
    }

    fn done(&self) -> anyhow::Result<()> {
        if let Some((k, _)) = self.options.first() {
            return Err(usage(format!("unknown or misplaced option --{k}")));
        }
        Ok(())
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str) -> anyhow::Result<Option<T>> {
        self.take(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    anyhow!(Exit::Config(format!(
                        "--{name}: `{v}` is not a valid number"
                    )))
                })
            })
            .transpose()
    }

    /// The configuration: the file if given, then the flags over it.
    fn config(&mut self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(p) => Config::load(p).map_err(|e| anyhow!(Exit::Config(e.to_string())))?,
            None => Config::default(),
        };
        if let Some(d) = self.state_dir.clone() {
            cfg.state_dir = d;
        }
        Ok(cfg)
    }

    fn store(&mut self) -> anyhow::Result<Store> {
        let cfg = self.config()?;
        let db = cfg.db_path();
        if !db.exists() {
            bail!(
                "no archive at {} (start `vigil-collector serve` with this state dir, or pass --state-dir)",
                db.display()
            );
        }
        Ok(Store::open(&db)?)
    }

    fn one(&self, what: &str) -> anyhow::Result<String> {
        match self.positional.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(usage(format!("missing {what}"))),
            _ => Err(usage(format!("expected one {what}"))),
        }
    }
}

const VALUE_OPTIONS: &[&str] = &[
    "config",
    "state-dir",
    "listen",
    "tls-cert",
    "tls-key",
    "plain-listen",
    "serial",
    "metrics-listen",
    "retention-days",
    "rollup-every-s",
    "silence-s",
    "loss-grace-s",
    "max-connections",
    "frames-per-s",
    "idle-timeout-s",
    "handshake-timeout-s",
    "unknown-per-minute",
    "max-pending",
    "sink-json",
    "sink-syslog",
    "sink-cef",
    "key",
    "name",
    "model",
    "device",
    "for",
    "reason",
    "severity",
    "from",
    "to",
    "format",
    "csv",
    "baseline-period-s",
    "internal-prefix",
    "allow-outbound",
    "unwatched-metric",
    "allow-lateral",
    "metric",
    "learn",
    "spike",
    "hold",
    "hold-count",
    "hold-of",
    "shift-window",
    "shift",
    "resolve-after",
    "duration-s",
];

fn parse_args() -> anyhow::Result<(String, Args)> {
    let mut p = lexopt::Parser::from_env();
    let mut command = None;
    let mut args = Args {
        config: None,
        state_dir: None,
        json: false,
        positional: Vec::new(),
        options: Vec::new(),
    };
    while let Some(a) = p.next().map_err(usage)? {
        match a {
            Long("version") | Short('V') if command.is_none() => {
                out!(
                    "vigil-collector {} (wire format {})",
                    env!("CARGO_PKG_VERSION"),
                    vigil_protocol::VERSION
                );
                std::process::exit(0);
            }
            Long("help") | Short('h') => {
                out!("{USAGE}");
                std::process::exit(0);
            }
            Long("config") => args.config = Some(p.value()?.into()),
            Long("state-dir") => args.state_dir = Some(p.value()?.into()),
            Long("json") => args.json = true,
            Long(name) => {
                let name = name.to_string();
                // `detect --csv FILE` reads a file; `access --csv` is a format.
                let switch = name == "csv" && command.as_deref() != Some("detect");
                let v = if VALUE_OPTIONS.contains(&name.as_str()) && !switch {
                    Some(
                        p.value()
                            .map_err(usage)?
                            .string()
                            .map_err(|_| usage(format!("--{name}: not UTF-8")))?,
                    )
                } else {
                    None
                };
                args.options.push((name, v));
            }
            Value(v) => {
                let v = v.string().map_err(|_| usage("arguments must be UTF-8"))?;
                if command.is_none() {
                    command = Some(v);
                } else {
                    args.positional.push(v);
                }
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    let command = command.ok_or_else(|| usage("missing command"))?;
    Ok((command, args))
}

/// Who runs an admin command, for the admin log.
fn actor() -> String {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() => format!("{s} (as {user})"),
        _ => user,
    }
}

fn run() -> anyhow::Result<()> {
    let (command, mut a) = parse_args()?;
    let now = clock::now_ms();
    match command.as_str() {
        "serve" => {
            let cfg = serve_config(&mut a)?;
            a.done()?;
            let (_tx, rx) = tokio::sync::watch::channel(false);
            // Machine-readable lines for scripts and tests, then `ready`.
            serve::run(cfg, true, rx, |s| {
                if let Some(a) = s.tls {
                    out!("listening tls {a}");
                }
                if let Some(pin) = &s.pin {
                    out!("pin_sha256 = \"{pin}\"");
                }
                if let Some(a) = s.plain {
                    out!("listening plain {a}");
                }
                if let Some(a) = s.metrics {
                    out!("listening metrics {a}");
                }
                out!("ready");
            })
        }
        "quickstart" => {
            let duration = a.number::<u64>("duration-s")?;
            a.done()?;
            cli::quickstart::run(duration)
        }
        "enroll" => {
            let key_text = a
                .take("key")
                .ok_or_else(|| usage("enroll needs --key (from `vigil-agent id`)"))?;
            let name = a.take("name").ok_or_else(|| usage("enroll needs --name"))?;
            let model = a.take("model").unwrap_or_default();
            a.done()?;
            let key = vigil_protocol::frame::parse_public_key(key_text.trim())
                .filter(|k| !k.is_weak())
                .ok_or_else(|| {
                    usage(format!(
                        "--key: `{key_text}` is not an ed25519:<base64> device key"
                    ))
                })?;
            let cfg = a.config()?;
            std::fs::create_dir_all(&cfg.state_dir)
                .with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
            let mut store = Store::open(&cfg.db_path())?;
            let id = store.enroll(&key, &name, &model, &actor(), now)?;
            if !model.is_empty() {
                if let Some(fleet) = store.fleet_baseline(&model)? {
                    let learned: detect::baseline::Learned = serde_json::from_str(&fleet)
                        .with_context(|| format!("the stored fleet baseline of model {model}"))?;
                    let mut b = load_baseline(&store, &id)?
                        .map_or_else(|| detect::baseline::Baseline::new(now), |(_, b)| b);
                    b.adopt(learned, &model, now);
                    save_baseline(
                        &mut store,
                        &id,
                        &b,
                        "baseline-adopt",
                        json!({"model": model}),
                        now,
                    )?;
                    out!("device {id} monitors against the fleet baseline of model {model}");
                }
            }
            out!(
                "enrolled device {id} as {name:?}{}",
                if model.is_empty() {
                    String::new()
                } else {
                    format!(" (model {model})")
                }
            );
            Ok(())
        }
        "approve" | "revoke" => {
            let what = a.one("DEVICE")?;
            a.done()?;
            let state = if command == "approve" {
                DeviceState::Approved
            } else {
                DeviceState::Revoked
            };
            let d = a.store()?.set_state(&what, state, &actor(), now)?;
            out!("device {} ({}) is now {}", d.id, d.name, d.state.name());
            Ok(())
        }
        "devices" => {
            a.done()?;
            let devices = a.store()?.devices()?;
            cli::views::devices(&devices, a.json);
            Ok(())
        }
        "device" => {
            let what = a.one("DEVICE")?;
            a.done()?;
            let store = a.store()?;
            let d = store.find_device(&what)?;
            let latest = store.latest_sample(&d.id)?;
            let alerts = store.alerts(true, Some(&d.id), None)?;
            let policy = a.config()?.detect.policy()?;
            let b = load_baseline(&store, &d.id)?.map_or(Value::Null, |(_, b)| {
                b.summary(&policy, &detect::score::Tuning::default())
            });
            cli::views::device(&d, latest.as_ref(), &alerts, &b, a.json);
            Ok(())
        }
        "alerts" => {
            let open = a.flag("open");
            let device = a.take("device");
            let severity = a
                .take("severity")
                .map(|s| {
                    alert::Severity::from_name(&s).ok_or_else(|| {
                        usage(format!(
                            "--severity: `{s}` is not info|low|medium|high|critical"
                        ))
                    })
                })
                .transpose()?;
            a.done()?;
            let store = a.store()?;
            let device = device
                .map(|d| store.find_device(&d).map(|d| d.id))
                .transpose()?;
            let alerts = store.alerts(open, device.as_deref(), severity)?;
            cli::views::alerts(&alerts, a.json);
            Ok(())
        }
        "ack" | "resolve" => {
            let id: i64 = a
                .one("ALERT")?
                .parse()
                .map_err(|_| usage("ALERT is an alert number (see `alerts`)"))?;
            a.done()?;
            let state = if command == "ack" {
                "acknowledged"
            } else {
                "resolved"
            };
            let al = a.store()?.set_alert_state(id, state, &actor(), now)?;
            out!("alert {} ({}) is now {}", al.id, al.rule, al.state);
            Ok(())
        }
        "export" => {
            let device = a
                .take("device")
                .ok_or_else(|| usage("export needs --device"))?;
            let time = |v: Option<String>, default: u64| -> anyhow::Result<u64> {
                v.map_or(Ok(default), |t| {
                    alert::parse_rfc3339(&t).ok_or_else(|| {
                        usage(format!("`{t}` is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"))
                    })
                })
            };
            let from = time(a.take("from"), 0)?;
            let to = time(a.take("to"), u64::MAX / 2)?;
            let format = a.take("format").unwrap_or_else(|| "csv".into());
            a.done()?;
            if !matches!(format.as_str(), "csv" | "json") {
                return Err(usage(format!("--format: `{format}` is not csv or json")));
            }
            let store = a.store()?;
            let d = store.find_device(&device)?;
            let rows = store.export(&d.id, from, to)?;
            cli::views::export(&d, &rows, &format);
            Ok(())
        }
        "audit" => {
            a.done()?;
            let report = a.store()?.audit()?;
            if a.json {
                out!(
                    "{}",
                    json!({"frames": report.frames, "problems": report.problems})
                );
            } else {
                for p in &report.problems {
                    out!("{p}");
                }
                out!(
                    "audit: {} stored frames re-verified, {} problems",
                    report.frames,
                    report.problems.len()
                );
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(Exit::Findings))
            }
        }
        "admin-log" => {
            a.done()?;
            let log = a.store()?.admin_log()?;
            if a.json {
                out!("{}", Value::Array(log));
            } else {
                for e in log {
                    out!(
                        "{} {} {} {} {}",
                        e["time"].as_str().unwrap_or(""),
                        e["actor"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["target"].as_str().unwrap_or(""),
                        e["detail"]
                    );
                }
            }
            Ok(())
        }
        "baseline" => baseline_command(&mut a, now),
        "access" => access_command(&mut a, now),
        "detect" => {
            let path = a
                .take("csv")
                .ok_or_else(|| usage("detect needs --csv FILE"))?;
            let d = detect::score::Tuning::default();
            let tuning = detect::score::Tuning {
                spike: a.number("spike")?.unwrap_or(d.spike),
                hold: a.number("hold")?.unwrap_or(d.hold),
                hold_count: a.number("hold-count")?.unwrap_or(d.hold_count),
                hold_of: a.number("hold-of")?.unwrap_or(d.hold_of),
                shift_window: a.number("shift-window")?.unwrap_or(d.shift_window),
                shift: a.number("shift")?.unwrap_or(d.shift),
                resolve_after: a.number("resolve-after")?.unwrap_or(d.resolve_after),
            };
            tuning.validate().map_err(usage)?;
            let opts = detect::replay::Options {
                metric: a.take("metric"),
                learn: a.number("learn")?,
                tuning,
            };
            a.done()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let s = detect::replay::run(&path, &opts, &mut out)?;
            log::info!(
                "{path}: {} rows of {}, learned from the first {}, {} anomalies",
                s.rows,
                s.metric,
                s.learned,
                s.anomalies
            );
            Ok(())
        }
        other => Err(usage(format!("unknown command `{other}`"))),
    }
}

/// A device's stored baseline, if it has one.
fn load_baseline(
    store: &Store,
    id: &str,
) -> anyhow::Result<Option<(store::BaselineRow, detect::baseline::Baseline)>> {
    let Some(row) = store.baseline(id)? else {
        return Ok(None);
    };
    let b = detect::baseline::Baseline::from_row(&row).map_err(|e| anyhow!("device {id}: {e}"))?;
    Ok(Some((row, b)))
}

/// Stores an admin change to a device's baseline, with its admin-log entry.
fn save_baseline(
    store: &mut Store,
    id: &str,
    b: &detect::baseline::Baseline,
    action: &str,
    detail: Value,
    now: u64,
) -> anyhow::Result<()> {
    store.set_baseline(
        id,
        b.phase.name(),
        b.started_ms,
        &b.to_json(),
        &actor(),
        action,
        detail,
        now,
    )?;
    Ok(())
}

/// The metric profiles learned from a device's archived samples since
/// its baseline started.
fn learn_from_archive(
    store: &Store,
    id: &str,
    b: &mut detect::baseline::Baseline,
    now: u64,
) -> anyhow::Result<u64> {
    let mut learning = detect::baseline::MetricLearning::default();
    let t = detect::score::Tuning::default();
    let n = store.for_each_sample(id, b.started_ms, now, |s, l| learning.add(s, l, &t))?;
    b.close(learning, now);
    Ok(n)
}

fn access_command(a: &mut Args, now: u64) -> anyhow::Result<()> {
    let sub = a.positional.first().cloned();
    if sub.is_some() {
        a.positional.remove(0);
    }
    match sub.as_deref() {
        None => {
            let device = a.take("device");
            let time = |v: Option<String>, default: u64| -> anyhow::Result<u64> {
                v.map_or(Ok(default), |t| {
                    alert::parse_rfc3339(&t).ok_or_else(|| {
                        usage(format!("`{t}` is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"))
                    })
                })
            };
            let from = time(a.take("from"), 0)?;
            let to = time(a.take("to"), u64::MAX / 2)?;
            let format = if a.json {
                "json"
            } else if a.flag("csv") {
                "csv"
            } else {
                "table"
            };
            a.done()?;
            let store = a.store()?;
            let device = device
                .map(|d| store.find_device(&d).map(|d| d.id))
                .transpose()?;
            let rows = store::access::record(store.conn(), device.as_deref(), from, to)?;
            cli::views::access(&rows, format, now);
            Ok(())
        }
        Some("open") => {
            let device = a
                .take("device")
                .ok_or_else(|| usage("access open needs --device D"))?;
            let span = a
                .take("for")
                .ok_or_else(|| usage("access open needs --for DURATION (e.g. 2h, 90m)"))?;
            let ms = access::parse_duration(&span)
                .filter(|&ms| ms <= 31 * 86_400_000)
                .ok_or_else(|| usage(format!("--for: `{span}` is not a duration of at most 31d such as 2h, 90m, 1h30m")))?;
            let reason = a
                .take("reason")
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| usage("access open needs --reason \"...\" (it goes in the audit log)"))?;
            a.done()?;
            let mut store = a.store()?;
            let d = store.find_device(&device)?;
            let who = actor();
            let until = now.saturating_add(ms);
            let tx = store.transaction()?;
            let id = access::open_window(&tx, &d.id, now, until, &reason, &who)?;
            tx.commit()?;
            out!(
                "access window {id} open for device {} ({}) until {}",
                d.id,
                d.name,
                alert::rfc3339(until)
            );
            Ok(())
        }
        Some("close") => {
            let device = a
                .take("device")
                .ok_or_else(|| usage("access close needs --device D"))?;
            a.done()?;
            let mut store = a.store()?;
            let d = store.find_device(&device)?;
            let who = actor();
            let tx = store.transaction()?;
            let n = access::close_windows(&tx, &d.id, &who, now)?;
            tx.commit()?;
            out!("{n} access windows closed for device {} ({})", d.id, d.name);
            Ok(())
        }
        Some("windows") => {
            let device = a.take("device");
            a.done()?;
            let store = a.store()?;
            let device = device
                .map(|d| store.find_device(&d).map(|d| d.id))
                .transpose()?;
            let ws = store::access::windows(store.conn(), device.as_deref().unwrap_or(""))?;
            let state = |w: &store::access::Opened| match w.closed_ms {
                Some(_) => "closed",
                None if w.until_ms <= now => "ended",
                None => "open",
            };
            if a.json {
                let v: Vec<Value> = ws
                    .iter()
                    .map(|w| {
                        json!({"id": w.id, "device": w.device, "from": alert::rfc3339(w.from_ms),
                               "until": alert::rfc3339(w.until_ms), "closed": w.closed_ms.map(alert::rfc3339),
                               "state": state(w), "reason": w.reason, "actor": w.actor})
                    })
                    .collect();
                out!("{}", Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = ws
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.to_string(),
                            w.device.clone(),
                            alert::rfc3339(w.from_ms),
                            alert::rfc3339(w.until_ms),
                            state(w).into(),
                            w.actor.clone(),
                            w.reason.clone(),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    cli::views::table(&["ID", "DEVICE", "FROM", "UNTIL", "STATE", "BY", "REASON"], &rows)
                );
            }
            Ok(())
        }
        Some(other) => Err(usage(format!(
            "unknown access command `{other}` (access [--device D] [--from T] [--to T] [--json|--csv], access open|close|windows)"
        ))),
    }
}

fn baseline_command(a: &mut Args, now: u64) -> anyhow::Result<()> {
    let sub = a.positional.first().cloned().ok_or_else(|| {
        usage("baseline needs show|close|approve|reset|export DEVICE or import --model MODEL FILE")
    })?;
    a.positional.remove(0);
    let cfg = a.config()?;
    let policy = cfg.detect.policy()?;
    let period_ms = policy.baseline_period_ms;
    let tuning = detect::score::Tuning::default();
    if sub == "import" {
        let model = a
            .take("model")
            .ok_or_else(|| usage("baseline import needs --model MODEL"))?;
        let file = a.one("FILE")?;
        a.done()?;
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        let doc: detect::baseline::Exported = serde_json::from_str(&text)
            .map_err(|e| anyhow!(Exit::Usage(format!("{file}: not a baseline export ({e})"))))?;
        if doc.format != detect::baseline::EXPORT_FORMAT {
            return Err(usage(format!(
                "{file}: format `{}`, this collector reads `{}`",
                doc.format,
                detect::baseline::EXPORT_FORMAT
            )));
        }
        if doc.learned.metrics.is_empty() && doc.learned.listeners.is_empty() {
            return Err(usage(format!(
                "{file}: the baseline learned nothing; export an approved one"
            )));
        }
        let mut store = a.store()?;
        let fleet = serde_json::to_string(&doc.learned)?;
        let stored: std::collections::HashMap<String, detect::baseline::Baseline> = store
            .baselines()?
            .into_iter()
            .filter_map(|(id, row)| {
                detect::baseline::Baseline::from_row(&row)
                    .ok()
                    .map(|b| (id, b))
            })
            .collect();
        let learned = doc.learned.clone();
        let devices = store.import_fleet_baseline(
            &model,
            &fleet,
            |id| {
                let mut b = stored
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| detect::baseline::Baseline::new(now));
                b.adopt(learned.clone(), &model, now);
                b.to_json()
            },
            &actor(),
            json!({"file": file, "from_device": doc.device, "from_name": doc.name}),
            now,
        )?;
        out!(
            "fleet baseline for model {model} imported (learned on {} {}); {} device(s) now monitor against it{}",
            doc.name,
            doc.device,
            devices.len(),
            if devices.is_empty() { String::new() } else { format!(": {}", devices.join(", ")) }
        );
        return Ok(());
    }
    let what = a.one("DEVICE")?;
    a.done()?;
    let mut store = a.store()?;
    let d = store.find_device(&what)?;
    let Some((row, mut b)) = load_baseline(&store, &d.id)? else {
        return Err(usage(format!(
            "device {} has no baseline: it starts when the device is approved",
            d.id
        )));
    };
    let refuse = |m: String| anyhow!(store::StoreError::Refused(m));
    match sub.as_str() {
        "show" => {
            let mut summary = if b.phase == detect::baseline::Phase::Baselining {
                // A preview of what closing now would learn.
                let mut preview = b.clone();
                learn_from_archive(&store, &d.id, &mut preview, now)?;
                preview.phase = detect::baseline::Phase::Baselining;
                preview.closed_ms = None;
                let mut s = preview.summary(&policy, &tuning);
                s["preview"] = json!(true);
                s
            } else {
                b.summary(&policy, &tuning)
            };
            summary["rev"] = json!(row.rev);
            cli::views::baseline(&d, &summary, a.json);
            Ok(())
        }
        "close" => {
            if b.phase != detect::baseline::Phase::Baselining {
                return Err(refuse(format!(
                    "the baseline of {} is already {}",
                    d.id,
                    b.phase.name()
                )));
            }
            let n = learn_from_archive(&store, &d.id, &mut b, now)?;
            save_baseline(
                &mut store,
                &d.id,
                &b,
                "baseline-close",
                json!({"samples": n, "metrics": b.learned.metrics.len()}),
                now,
            )?;
            out!(
                "baseline of {} ({}) closed: learned {} metrics from {n} samples, {} listeners, {} outbound endpoints; review with `baseline show`, then `baseline approve`",
                d.id, d.name, b.learned.metrics.len(), b.learned.listeners.len(), b.learned.outbound.len()
            );
            Ok(())
        }
        "approve" => {
            if b.phase != detect::baseline::Phase::Review {
                return Err(refuse(format!(
                    "the baseline of {} is {}: only a closed baseline under review can be approved{}",
                    d.id,
                    b.phase.name(),
                    if b.phase == detect::baseline::Phase::Baselining { " (close it first)" } else { "" }
                )));
            }
            b.approve(now);
            save_baseline(
                &mut store,
                &d.id,
                &b,
                "baseline-approve",
                json!({"metrics": b.learned.metrics.len()}),
                now,
            )?;
            out!(
                "baseline of {} ({}) approved: the device is monitored against it",
                d.id,
                d.name
            );
            Ok(())
        }
        "reset" => {
            let previous = b.phase.name();
            let fresh = detect::baseline::Baseline::new(now);
            save_baseline(
                &mut store,
                &d.id,
                &fresh,
                "baseline-reset",
                json!({"previous": previous}),
                now,
            )?;
            out!(
                "baseline of {} ({}) reset: learning again until {}",
                d.id,
                d.name,
                alert::rfc3339(now.saturating_add(period_ms))
            );
            Ok(())
        }
        "export" => {
            if b.phase == detect::baseline::Phase::Baselining {
                return Err(refuse(format!(
                    "the baseline of {} is still learning; close and approve it first",
                    d.id
                )));
            }
            let doc = detect::baseline::Exported {
                format: detect::baseline::EXPORT_FORMAT.into(),
                device: d.id.clone(),
                name: d.name.clone(),
                model: d.model.clone(),
                approved: b.approved_ms.map(alert::rfc3339),
                learned: b.learned,
            };
            out!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        other => Err(usage(format!(
            "unknown baseline command `{other}` (show, close, approve, reset, export, import)"
        ))),
    }
}

fn addr(name: &str, v: &str) -> anyhow::Result<std::net::SocketAddr> {
    v.parse().map_err(|_| {
        anyhow!(Exit::Config(format!(
            "--{name}: `{v}` is not HOST:PORT (an IP address and port)"
        )))
    })
}

fn net_sink(name: &str, v: &str) -> anyhow::Result<(std::net::SocketAddr, Transport)> {
    match v.strip_suffix("/tcp") {
        Some(a) => Ok((addr(name, a)?, Transport::Tcp)),
        None => Ok((
            addr(name, v.strip_suffix("/udp").unwrap_or(v))?,
            Transport::Udp,
        )),
    }
}

fn serve_config(a: &mut Args) -> anyhow::Result<Config> {
    let mut cfg = a.config()?;
    if let Some(v) = a.take("listen") {
        cfg.listen = Some(addr("listen", &v)?);
    }
    if a.flag("no-tls") {
        cfg.listen = None;
    }
    if let Some(v) = a.take("tls-cert") {
        cfg.tls_cert = Some(v.into());
    }
    if let Some(v) = a.take("tls-key") {
        cfg.tls_key = Some(v.into());
    }
    if let Some(v) = a.take("plain-listen") {
        cfg.plain_listen = Some(addr("plain-listen", &v)?);
    }
    if a.flag("insecure-plaintext") {
        cfg.insecure_plaintext = true;
    }
    for s in a.take_all("serial") {
        let (dev, baud) = match s.rsplit_once(':') {
            Some((d, b)) if b.chars().all(|c| c.is_ascii_digit()) && !b.is_empty() => (
                d.to_string(),
                b.parse()
                    .map_err(|_| anyhow!(Exit::Config(format!("--serial: bad baud in `{s}`"))))?,
            ),
            _ => (s.clone(), 115_200),
        };
        cfg.serial.push(config::SerialPort {
            device: dev.into(),
            baud,
        });
    }
    if let Some(v) = a.take("metrics-listen") {
        cfg.metrics_listen = Some(addr("metrics-listen", &v)?);
    }
    if let Some(v) = a.number("retention-days")? {
        cfg.retention_days = v;
    }
    if let Some(v) = a.number("rollup-every-s")? {
        cfg.rollup_every_s = v;
    }
    if let Some(v) = a.number("silence-s")? {
        cfg.silence_s = v;
    }
    if let Some(v) = a.number("loss-grace-s")? {
        cfg.loss_grace_s = v;
    }
    if let Some(v) = a.number("max-connections")? {
        cfg.limits.max_connections = v;
    }
    if let Some(v) = a.number("frames-per-s")? {
        cfg.limits.frames_per_s = v;
    }
    if let Some(v) = a.number("idle-timeout-s")? {
        cfg.limits.idle_timeout_s = v;
    }
    if let Some(v) = a.number("handshake-timeout-s")? {
        cfg.limits.handshake_timeout_s = v;
    }
    if let Some(v) = a.number("unknown-per-minute")? {
        cfg.limits.unknown_per_minute = v;
    }
    if let Some(v) = a.number("baseline-period-s")? {
        cfg.detect.baseline_period_s = v;
    }
    let prefixes = a.take_all("internal-prefix");
    if !prefixes.is_empty() {
        cfg.detect.internal_prefixes = prefixes;
    }
    cfg.detect
        .allow_outbound
        .extend(a.take_all("allow-outbound"));
    cfg.detect.allow_lateral.extend(a.take_all("allow-lateral"));
    cfg.detect
        .unwatched_metrics
        .extend(a.take_all("unwatched-metric"));
    if let Some(v) = a.number("max-pending")? {
        cfg.limits.max_pending = v;
    }
    for v in a.take_all("sink-json") {
        cfg.sinks.push(Sink::Json { path: v.into() });
    }
    for v in a.take_all("sink-syslog") {
        let (address, transport) = net_sink("sink-syslog", &v)?;
        cfg.sinks.push(Sink::Syslog { address, transport });
    }
    for v in a.take_all("sink-cef") {
        let stripped = v
            .strip_suffix("/tcp")
            .or_else(|| v.strip_suffix("/udp"))
            .unwrap_or(&v);
        if stripped.parse::<std::net::SocketAddr>().is_ok() {
            let (address, transport) = net_sink("sink-cef", &v)?;
            cfg.sinks.push(Sink::Cef {
                address: Some(address),
                transport,
                path: None,
            });
        } else {
            cfg.sinks.push(Sink::Cef {
                address: None,
                transport: Transport::Udp,
                path: Some(v.into()),
            });
        }
    }
    cfg.validate()
        .map_err(|e| anyhow!(Exit::Config(e.to_string())))?;
    // The time zone needs the zone database, which `config` does not link.
    access::Policy::new(&cfg.access).map_err(|e| anyhow!(Exit::Config(e.to_string())))?;
    Ok(cfg)
}
