//! The command line: parses it (`args`, clap) and runs one command:
//! `serve`, the admin commands (which work on the same state dir while
//! `serve` runs), `quickstart` or `detect`. What the commands print is in
//! `views`. The top of the collector: it calls every stage and no stage
//! calls it.

mod access;
pub mod args;
mod baseline;
mod policy;
pub mod quickstart;
mod serve;
pub mod views;

use anyhow::{anyhow, bail, Context};
use clap::{CommandFactory, FromArgMatches};
use serde_json::{json, Value};

use crate::config::Config;
use crate::detect;
use crate::store::{DeviceState, Store};
use crate::{alert, clock};
use args::{Cli, Command, ExportFormat, Global, SeverityArg};

/// Errors that carry their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Exit {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("")]
    Findings,
}

pub fn usage(m: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(Exit::Usage(m.to_string()))
}

pub fn bad_config(m: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(Exit::Config(m.to_string()))
}

/// The version line: the crate's version and the wire format it speaks.
fn version() -> String {
    format!(
        "{} (wire format {})",
        env!("CARGO_PKG_VERSION"),
        vigil_protocol::VERSION
    )
}

/// Parses the command line; `--help`, `--version` and usage errors print
/// and exit here (0, 0 and 2), as clap does.
pub fn parse() -> Cli {
    let matches = Cli::command().version(version()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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

/// The configuration: the file if given, then --state-dir over it.
fn config(g: &Global) -> anyhow::Result<Config> {
    let mut cfg = match &g.config {
        Some(p) => Config::load(p).map_err(bad_config)?,
        None => Config::default(),
    };
    if let Some(d) = g.state_dir.clone() {
        cfg.state_dir = d;
    }
    Ok(cfg)
}

/// The existing archive of the state dir.
fn store(g: &Global) -> anyhow::Result<Store> {
    let db = config(g)?.db_path();
    if !db.exists() {
        bail!(
            "no archive at {} (start `vigil-collector serve` with this state dir, or pass --state-dir)",
            db.display()
        );
    }
    Ok(Store::open_checked(&db)?)
}

/// `--from`/`--to`: a UTC date or time, or the open end.
fn time(v: Option<&str>, default: u64) -> anyhow::Result<u64> {
    v.map_or(Ok(default), |t| {
        alert::parse_rfc3339(t)
            .ok_or_else(|| usage(format!("`{t}` is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")))
    })
}

fn range(r: &args::Range) -> anyhow::Result<(u64, u64)> {
    Ok((
        time(r.from.as_deref(), 0)?,
        time(r.to.as_deref(), u64::MAX / 2)?,
    ))
}

/// A device id found by its id, id prefix or name.
fn device_id(store: &Store, d: Option<&str>) -> anyhow::Result<Option<String>> {
    Ok(d.map(|d| store.find_device(d).map(|d| d.id)).transpose()?)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    let now = clock::now_ms();
    match cli.command {
        Command::Serve(s) => {
            if let Some(spec) = &s.test_clock {
                clock::set_test_clock(spec)?;
            }
            let cfg = serve::config(config(g)?, &s)?;
            let (_tx, rx) = tokio::sync::watch::channel(false);
            // Machine-readable lines for scripts and tests, then `ready`.
            crate::serve::run(cfg, true, rx, |s| {
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
        Command::Quickstart { duration_s } => quickstart::run(duration_s),
        Command::Enroll { key, name, model } => enroll(g, &key, &name, model, now),
        Command::Approve { device } => set_state(g, &device, DeviceState::Approved, now),
        Command::Revoke { device } => set_state(g, &device, DeviceState::Revoked, now),
        Command::Devices => {
            views::devices(&store(g)?.devices()?, g.json);
            Ok(())
        }
        Command::Device { device } => {
            let store = store(g)?;
            let d = store.find_device(&device)?;
            let latest = store.latest_sample(&d.id)?;
            let alerts = store.alerts(true, Some(&d.id), None)?;
            let policy = config(g)?.detect.policy()?;
            let b = baseline::load(&store, &d.id)?.map_or(Value::Null, |(_, b)| {
                b.summary(&policy, &detect::score::Tuning::default())
            });
            views::device(&d, latest.as_ref(), &alerts, &b, g.json);
            Ok(())
        }
        Command::Alerts {
            open,
            device,
            severity,
        } => {
            let severity = severity.map(|s| match s {
                SeverityArg::Info => alert::Severity::Info,
                SeverityArg::Low => alert::Severity::Low,
                SeverityArg::Medium => alert::Severity::Medium,
                SeverityArg::High => alert::Severity::High,
                SeverityArg::Critical => alert::Severity::Critical,
            });
            let store = store(g)?;
            let device = device_id(&store, device.as_deref())?;
            let alerts = store.alerts(open, device.as_deref(), severity)?;
            views::alerts(&alerts, g.json);
            Ok(())
        }
        Command::Ack { alert } => set_alert(g, alert, "acknowledged", now),
        Command::Resolve { alert } => set_alert(g, alert, "resolved", now),
        Command::Export {
            device,
            range: r,
            format,
        } => {
            let (from, to) = range(&r)?;
            let store = store(g)?;
            let d = store.find_device(&device)?;
            let rows = store.export(&d.id, from, to)?;
            let format = match format {
                ExportFormat::Csv => "csv",
                ExportFormat::Json => "json",
            };
            views::export(&d, &rows, format);
            Ok(())
        }
        Command::Audit {
            against,
            collector_key,
        } => {
            let pinned = match collector_key.as_deref() {
                None => None,
                Some(h) => Some(crate::store::chain::parse_key(h).ok_or_else(|| {
                    usage("--collector-key: give the 64 hex digits `checkpoints` prints as collector_key")
                })?),
            };
            let against = match &against {
                None => None,
                Some(p) => Some((
                    p,
                    std::fs::read_to_string(p)
                        .map_err(|e| anyhow!("--against {}: {e}", p.display()))?,
                )),
            };
            let store = store(g)?;
            let mut report = store.audit()?;
            let mut checked = 0;
            if let Some((path, text)) = &against {
                let (n, problems) = store
                    .audit_against(text, pinned.as_ref())
                    .map_err(|e| anyhow!("--against {}: {e}", path.display()))?;
                checked = n;
                report.problems.extend(problems);
            }
            if g.json {
                out!(
                    "{}",
                    json!({"frames": report.frames, "links": report.links,
                           "checkpoints": checked,
                           "problems": report.problems, "notes": report.notes})
                );
            } else {
                for p in &report.problems {
                    out!("{p}");
                }
                for n in &report.notes {
                    out!("note: {n}");
                }
                let against = if against.is_some() {
                    format!(", checked against {checked} checkpoints")
                } else {
                    String::new()
                };
                out!(
                    "audit: {} stored frames re-verified, {} chain links walked{against}, {} problems",
                    report.frames,
                    report.links,
                    report.problems.len()
                );
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(Exit::Findings))
            }
        }
        Command::Checkpoints => {
            for c in store(g)?.checkpoints()? {
                out!("{c}");
            }
            Ok(())
        }
        Command::AdminLog => {
            let log = store(g)?.admin_log()?;
            if g.json {
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
        Command::Baseline { command } => baseline::run(g, command, now),
        Command::Access { command, record } => access::run(g, command, &record, now),
        Command::Policy(p) => policy::run(g, &p, now),
        Command::Detect(d) => detect(&d),
    }
}

fn enroll(
    g: &Global,
    key_text: &str,
    name: &str,
    model: Option<String>,
    now: u64,
) -> anyhow::Result<()> {
    let model = model.unwrap_or_default();
    let key = vigil_protocol::frame::parse_public_key(key_text.trim())
        .filter(|k| !k.is_weak())
        .ok_or_else(|| {
            usage(format!(
                "--key: `{key_text}` is not an ed25519:<base64> device key"
            ))
        })?;
    let cfg = config(g)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
    let mut store = Store::open_checked(&cfg.db_path())?;
    let id = store.enroll(&key, name, &model, &actor(), now)?;
    if !model.is_empty() {
        if let Some(fleet) = store.fleet_baseline(&model)? {
            let learned: detect::baseline::Learned = serde_json::from_str(&fleet)
                .with_context(|| format!("the stored fleet baseline of model {model}"))?;
            let mut b = baseline::load(&store, &id)?
                .map_or_else(|| detect::baseline::Baseline::new(now), |(_, b)| b);
            b.adopt(learned, &model, now);
            baseline::save(
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

fn set_state(g: &Global, what: &str, state: DeviceState, now: u64) -> anyhow::Result<()> {
    let d = store(g)?.set_state(what, state, &actor(), now)?;
    out!("device {} ({}) is now {}", d.id, d.name, d.state.name());
    Ok(())
}

fn set_alert(g: &Global, id: i64, state: &str, now: u64) -> anyhow::Result<()> {
    let al = store(g)?.set_alert_state(id, state, &actor(), now)?;
    out!("alert {} ({}) is now {}", al.id, al.rule, al.state);
    Ok(())
}

fn detect(a: &args::Detect) -> anyhow::Result<()> {
    let d = detect::score::Tuning::default();
    let tuning = detect::score::Tuning {
        spike: a.spike.unwrap_or(d.spike),
        hold: a.hold.unwrap_or(d.hold),
        hold_count: a.hold_count.unwrap_or(d.hold_count),
        hold_of: a.hold_of.unwrap_or(d.hold_of),
        shift_window: a.shift_window.unwrap_or(d.shift_window),
        shift: a.shift.unwrap_or(d.shift),
        resolve_after: a.resolve_after.unwrap_or(d.resolve_after),
        change: detect::recent::ChangeTuning {
            history: a.change_history.unwrap_or(d.change.history),
            short: a.change_short.unwrap_or(d.change.short),
            block: a.change_block.unwrap_or(d.change.block),
            spike: a.change_spike.unwrap_or(d.change.spike),
            level: a.change_level.unwrap_or(d.change.level),
            blocks: a.change_blocks.unwrap_or(d.change.blocks),
            season: a.change_season.unwrap_or(d.change.season),
            quiet: a.change_quiet.unwrap_or(d.change.quiet),
            arm_after: d
                .change
                .arm_after
                .min(a.change_history.unwrap_or(d.change.history)),
            enabled: !a.no_change,
            ..d.change
        },
    };
    tuning.validate().map_err(usage)?;
    let opts = detect::replay::Options {
        metric: a.metric.clone(),
        learn: a.learn,
        tuning,
    };
    let path = a.csv.to_string_lossy();
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
