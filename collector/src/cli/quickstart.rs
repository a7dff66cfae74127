//! `vigil-collector quickstart`: the whole system on one machine in one
//! command. A collector on loopback with a fresh state dir, the
//! `vigil-agent` built beside this binary with a fresh key, enrolled and
//! pinned, and a live view of devices, samples and alerts. Ctrl-C stops
//! both and leaves the state dir for the admin commands.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use serde_json::Value;

use crate::cli::views;
use crate::config::{Config, Sink};
use crate::store::Store;

fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let agent = dir.join("vigil-agent");
    if !agent.exists() {
        bail!(
            "no vigil-agent beside this binary in {} (build both: cargo build --release --locked -p vigil-agent -p vigil-collector)",
            dir.display()
        );
    }
    Ok(agent)
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let stamp = crate::clock::now_ms();
    let dir = std::env::temp_dir().join(format!("vigil-quickstart-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn agent(agent: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent)
        .args(args)
        .output()
        .with_context(|| format!("running {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "vigil-agent {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs until Ctrl-C (or for `duration_s`).
pub fn run(duration_s: Option<u64>) -> anyhow::Result<()> {
    let agent_bin = agent_binary()?;
    let dir = fresh_dir()?;
    let (agent_dir, collector_dir) = (dir.join("agent"), dir.join("collector"));
    std::fs::create_dir_all(&collector_dir)?;

    // Ctrl-C and SIGTERM are taken by a waiting thread; the agent runs in
    // its own process group so the terminal's Ctrl-C reaches only us and
    // we stop it in order.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;

    agent(
        &agent_bin,
        &["keygen", "--state-dir", &agent_dir.to_string_lossy()],
    )?;
    let id = agent(
        &agent_bin,
        &["id", "--state-dir", &agent_dir.to_string_lossy()],
    )?;
    let key = id
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .and_then(|k| vigil_protocol::frame::parse_public_key(k.trim()))
        .context("reading the agent's key from `vigil-agent id`")?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this-machine".into());
    let alerts_file = dir.join("alerts.jsonl");
    let cfg = Config {
        state_dir: collector_dir.clone(),
        listen: Some(([127, 0, 0, 1], 0).into()),
        silence_s: 30,
        sinks: vec![Sink::Json {
            path: alerts_file.clone(),
        }],
        // A one-minute baseline, so the lifecycle shows in a short run.
        detect: crate::config::Detect {
            baseline_period_s: QUICKSTART_BASELINE_S,
            ..crate::config::Detect::default()
        },
        ..Config::default()
    };
    let device = Store::open(&cfg.db_path())?.enroll(
        &key,
        &host,
        "quickstart",
        "quickstart",
        crate::clock::now_ms(),
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let serve_cfg = cfg.clone();
    let server = std::thread::spawn(move || {
        crate::serve::run(serve_cfg, false, stop_rx, |s| {
            let _ = started_tx.send(s);
        })
    });
    let Ok(started) = started_rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = stop_tx.send(true);
        return match server.join() {
            Ok(Err(e)) => Err(e),
            _ => bail!("the collector did not start"),
        };
    };
    let (Some(addr), Some(pin)) = (started.tls, started.pin) else {
        bail!("the collector has no TLS listener");
    };

    let agent_cfg = agent_dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "state_dir = \"{}\"\ninterval_ms = 1000\nbatch = 1\nsockets_interval_s = 10\n\n[collector]\naddress = \"{addr}\"\npin_sha256 = \"{pin}\"\n",
            agent_dir.display()
        ),
    )?;
    let agent_log = std::fs::File::create(dir.join("agent.log"))?;
    let mut child: Child = Command::new(&agent_bin)
        .args(["run", "--config", &agent_cfg.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", agent_bin.display()))?;

    out!("Vigil quickstart");
    out!("  collector  TLS 1.3 on {addr}, certificate pin {pin}");
    out!(
        "  agent      {} (device {device}, pid {})",
        agent_bin.display(),
        child.id()
    );
    out!("  state      {}", dir.display());
    out!(
        "  baseline   learning for {QUICKSTART_BASELINE_S} s, then `baseline.ready-for-review`; approve with"
    );
    out!(
        "             vigil-collector baseline approve {device} --state-dir {}",
        collector_dir.display()
    );
    out!("Ctrl-C stops both.\n");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            if signals.wait().is_ok() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let until = duration_s.map(|s| Instant::now() + Duration::from_secs(s));
    let store = Store::open(&cfg.db_path())?;
    let mut shown_alerts = 0i64;
    let mut next_view = Instant::now() + Duration::from_secs(2);
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst)
            || until.is_some_and(|u| Instant::now() >= u)
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "vigil-agent exited ({status}); see {}",
                dir.join("agent.log").display()
            );
            break;
        }
        if Instant::now() >= next_view {
            next_view += Duration::from_secs(2);
            view(&store, &mut shown_alerts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    out!("\nstopping the agent and the collector ...");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = stop_tx.send(true);
    match server.join() {
        Ok(r) => r?,
        Err(_) => bail!("the collector thread panicked"),
    }
    view(&store, &mut shown_alerts);
    out!("\nState kept in {}:", dir.display());
    out!(
        "  vigil-collector devices --state-dir {}",
        collector_dir.display()
    );
    out!(
        "  vigil-collector export --device {device} --state-dir {} --format csv",
        collector_dir.display()
    );
    out!(
        "  vigil-collector audit --state-dir {}",
        collector_dir.display()
    );
    out!(
        "  vigil-collector baseline show {device} --state-dir {}",
        collector_dir.display()
    );
    out!("  alerts as JSON lines: {}", alerts_file.display());
    Ok(())
}

/// The quickstart's baseline period (a real one is days).
const QUICKSTART_BASELINE_S: u64 = 60;

fn view(store: &Store, shown_alerts: &mut i64) {
    let Ok(devices) = store.devices() else { return };
    out!("---- {}", crate::alert::rfc3339(crate::clock::now_ms()));
    views::devices(&devices, false);
    for d in &devices {
        if let Ok(Some(s)) = store.latest_sample(&d.id) {
            out!("{}  {}", d.name, views::sample_line(&s));
        }
    }
    if let Ok(alerts) = store.alerts(false, None, None) {
        let mut new: Vec<_> = alerts.iter().filter(|a| a.id > *shown_alerts).collect();
        new.sort_by_key(|a| a.id);
        for a in new {
            out!(
                "ALERT {} [{}] {} {}: {}",
                a.id,
                a.severity,
                a.rule,
                a.device_name.as_deref().unwrap_or(&a.device),
                a.evidence.get("seen").and_then(Value::as_str).unwrap_or("")
            );
            *shown_alerts = (*shown_alerts).max(a.id);
        }
    }
}
