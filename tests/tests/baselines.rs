//! Baselines through the real binaries: the lifecycle commands, one
//! approved baseline shared by every device of a model (`export` on one
//! device, `import --model`), the phases surviving a restart, the export
//! replayed by `detect`, and the DEV scoring table reproduced by its
//! command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::collector::Collector;
use vigil_tests::{keygen, tempdir, Agent};

fn key_text(dir: &Path) -> (String, String) {
    let key = keygen(dir);
    let mut text = String::new();
    vigil_protocol::frame::write_public_key(&mut text, &key).unwrap();
    (vigil_protocol::DeviceId::of(&key).to_string(), text)
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: std::process::Output, says: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "expected `{says}` in: {err}");
}

fn show(c: &Collector, device: &str) -> Value {
    serde_json::from_str(&ok(c.cli(&["baseline", "show", device, "--json"]))).unwrap()
}

fn agent(c: &Collector, dir: &Path) -> Agent {
    Agent::start(&[
        "--state-dir",
        dir.to_str().unwrap(),
        "--collector",
        c.tls.as_deref().unwrap(),
        "--pin",
        c.pin.as_deref().unwrap(),
        "--interval-ms",
        "100",
        "--batch",
        "1",
        "--sockets-interval-s",
        "1",
    ])
}

#[test]
fn one_approved_baseline_is_shared_by_every_device_of_a_model() {
    let dir = tempdir("fleet");
    let state = dir.join("collector");
    let args = ["--listen", "127.0.0.1:0", "--baseline-period-s", "3600"];
    let c = Collector::start(&state, &args);
    let (a_id, a_key) = key_text(&dir.join("a"));
    let (b_id, b_key) = key_text(&dir.join("b"));
    ok(c.cli(&[
        "enroll", "--key", &a_key, "--name", "ecg-a", "--model", "ECG-1",
    ]));
    ok(c.cli(&[
        "enroll", "--key", &b_key, "--name", "ecg-b", "--model", "ECG-1",
    ]));
    let agents = [agent(&c, &dir.join("a")), agent(&c, &dir.join("b"))];
    // 24 samples fill the detector's rolling window; 100 ms apart.
    let enough = |c: &Collector| {
        c.device(&a_id)
            .is_some_and(|d| d["frames_received"].as_u64().unwrap_or(0) >= 40)
    };
    assert!(c.wait_for(Duration::from_secs(30), enough), "{}", c.log());

    let s = show(&c, "ecg-a");
    assert_eq!(
        (s["phase"].as_str(), s["preview"].as_bool()),
        (Some("baselining"), Some(true))
    );
    refused(c.cli(&["baseline", "approve", "ecg-a"]), "close it first");
    refused(c.cli(&["baseline", "export", "ecg-a"]), "still learning");
    let closed = ok(c.cli(&["baseline", "close", "ecg-a"]));
    assert!(closed.contains("closed: learned"), "{closed}");
    refused(c.cli(&["baseline", "close", "ecg-a"]), "already review");
    ok(c.cli(&["baseline", "approve", "ecg-a"]));
    let a = show(&c, "ecg-a");
    assert_eq!(a["phase"], "monitoring");
    let metrics = a["metrics"].as_array().unwrap().clone();
    assert!(
        metrics
            .iter()
            .any(|m| m["metric"] == "cpu.busy" && m["samples"].as_u64().unwrap() >= 24),
        "{a:#}"
    );
    let human = ok(c.cli(&["baseline", "show", "ecg-a"]));
    assert!(
        human.contains("cpu.busy") && human.contains("ALERT ABOVE"),
        "{human}"
    );

    // The export, imported for the model: device B, still learning, and a
    // device enrolled afterwards are held to A's approved baseline.
    let export = ok(c.cli(&["baseline", "export", "ecg-a"]));
    let file = dir.join("ecg-1.baseline.json");
    std::fs::write(&file, &export).unwrap();
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{\"format\": \"something else\"}").unwrap();
    refused(
        c.cli(&[
            "baseline",
            "import",
            "--model",
            "ECG-1",
            garbage.to_str().unwrap(),
        ]),
        "not a baseline export",
    );
    assert_eq!(show(&c, "ecg-b")["phase"], "baselining");
    let imported = ok(c.cli(&[
        "baseline",
        "import",
        "--model",
        "ECG-1",
        file.to_str().unwrap(),
    ]));
    assert!(imported.contains("2 device(s)"), "{imported}");
    let b = show(&c, "ecg-b");
    assert_eq!(b["phase"], "monitoring");
    assert_eq!(b["source"], "fleet baseline of model ECG-1");
    assert_eq!(
        b["metrics"],
        Value::Array(metrics.clone()),
        "B holds exactly A's profiles"
    );
    let (_, c_key) = key_text(&dir.join("c"));
    let enrolled = ok(c.cli(&[
        "enroll", "--key", &c_key, "--name", "ecg-c", "--model", "ECG-1",
    ]));
    assert!(
        enrolled.contains("fleet baseline of model ECG-1"),
        "{enrolled}"
    );
    assert_eq!(show(&c, "ecg-c")["metrics"], Value::Array(metrics.clone()));
    let log = ok(c.cli(&["admin-log", "--json"]));
    for action in [
        "baseline-close",
        "baseline-approve",
        "baseline-import",
        "baseline-adopt",
    ] {
        assert!(log.contains(action), "{action} is in the admin log: {log}");
    }

    // B keeps streaming against the fleet baseline; a restart keeps every
    // phase and profile.
    let frames_b = c.device(&b_id).unwrap()["frames_received"]
        .as_u64()
        .unwrap();
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.device(&b_id).unwrap()
            ["frames_received"]
            .as_u64()
            .unwrap()
            > frames_b + 5)
    );
    for a in agents {
        a.stop();
    }
    assert_eq!(c.stop(), Some(0));
    let c = Collector::start(&state, &args);
    assert_eq!(show(&c, "ecg-b")["metrics"], Value::Array(metrics));
    assert_eq!(show(&c, "ecg-a")["phase"], "monitoring");
    ok(c.cli(&["baseline", "reset", "ecg-a"]));
    assert_eq!(show(&c, "ecg-a")["phase"], "baselining");

    // What A sent, exported, replays through the same detector.
    let csv = ok(c.cli(&["export", "--device", &a_id, "--format", "csv"]));
    let export_file = dir.join("a.csv");
    std::fs::write(&export_file, &csv).unwrap();
    let out = ok(c.cli(&[
        "detect",
        "--csv",
        export_file.to_str().unwrap(),
        "--metric",
        "cpu.busy",
        "--learn",
        "24",
    ]));
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows[0], "timestamp,score,anomaly");
    let samples = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(rows.len() - 1, samples.len(), "one output row per sample");
    assert!(rows[1..]
        .iter()
        .all(|r| r.ends_with(",0") || r.ends_with(",1")));
}

/// NAB data (`../shared/data/{set}`, or `env`) and the team's scorer,
/// where this machine has them.
fn nab_data(set: &str, env: &str) -> Option<(PathBuf, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data =
        std::env::var_os(env).map_or_else(|| root.join("../shared/data").join(set), PathBuf::from);
    let scorer = std::env::var_os("NAB_SCORE")
        .map_or_else(|| root.join("../shared/tools/nab_score.py"), PathBuf::from);
    (data.join("combined_windows.json").is_file() && scorer.is_file()).then_some((data, scorer))
}

/// Runs `tests/bench/nab-dev.sh` on a NAB set and checks that it prints
/// the committed table, whose pooled standard score is `standard`.
fn nab_table_is_reproduced(set: &str, env: &str, table: &str, standard: &str) {
    let Some((data, scorer)) = nab_data(set, env) else {
        eprintln!("skipped: no NAB data at ../shared/data/{set} (set {env} and NAB_SCORE)");
        return;
    };
    if Command::new("python3").arg("--version").output().is_err() {
        return vigil_tests::cannot_run("no python3 for the scorer (apt-get install python3)");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("tests/bench/nab-dev.sh"))
        .env("NAB_DEV", &data)
        .env("NAB_SCORE", &scorer)
        .env("VIGIL_COLLECTOR", vigil_tests::binary("vigil-collector"))
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let expected = std::fs::read_to_string(root.join("collector/testdata").join(table)).unwrap();
    assert_eq!(
        printed.trim_end(),
        expected.trim_end(),
        "the committed {table} is what the command prints"
    );
    assert!(
        printed.contains(&format!("NAB standard            score    {standard}")),
        "{printed}"
    );
}

#[test]
fn the_nab_dev_table_is_reproduced_by_its_command() {
    nab_table_is_reproduced("nab-dev", "NAB_DEV", "nab-dev-table.txt", "73.60");
}

#[test]
fn the_nab_dev48_table_is_reproduced_by_its_command() {
    nab_table_is_reproduced("nab-dev48", "NAB_DEV48", "nab-dev48-table.txt", "67.51");
}

/// A sample whose CPU is `busy` ticks of 200 busy, the rest as the
/// scripted device's usual samples.
fn cpu_sample(busy: u64) -> vigil_protocol::Body {
    use vigil_protocol::sample::{CpuTicks, Memory, NetCounters};
    let s = vigil_protocol::Sample {
        time_ms: vigil_tests::collector::now_ms(),
        interval_ms: 1000,
        uptime_s: 500,
        cpu: CpuTicks {
            user: busy,
            idle: 200 - busy,
            ..Default::default()
        },
        memory: Memory {
            total_kib: 4_000_000,
            available_kib: 3_000_000,
            ..Default::default()
        },
        net: heapless::Vec::from_slice(&[NetCounters {
            iface: 0,
            rx_bytes: 1000,
            rx_packets: 10,
            tx_bytes: 500,
            tx_packets: 5,
            ..Default::default()
        }])
        .unwrap(),
        load_centi: [10, 20, 30],
        processes: 80,
        ..Default::default()
    };
    vigil_protocol::Body::Samples(vigil_protocol::Samples::new(s))
}

#[test]
fn an_anomaly_in_progress_survives_a_collector_kill() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use vigil_tests::collector::{Device, Link};
    let dir = tempdir("alarm-kill");
    let state = dir.join("collector");
    let args = ["--baseline-period-s", "3600"];
    let mut d = Device::new(71);
    // Enrolled before the collector starts, so the first connection counts.
    ok(vigil_tests::collector::cli(
        &state,
        &["enroll", "--key", &d.public_key(), "--name", "pump"],
    ));
    let c = Collector::start_plain(&state, &args);
    let mut link = Link::connect(c.plain.as_deref().unwrap());
    let mut frames = vec![d.frame(d.hello_body())];
    for _ in 0..3 {
        frames.push(d.frame(d.sample_body(16)));
    }
    link.send(&frames);
    assert_eq!(link.ack(Duration::from_secs(10)).map(|a| a.seq), Some(3));
    ok(c.cli(&["baseline", "close", "pump"]));
    ok(c.cli(&["baseline", "approve", "pump"]));
    // The CPU pinned: sent until the writer has taken the approval.
    let deviation = |c: &Collector| {
        c.alerts().into_iter().find(|a| {
            a["rule"] == "baseline.metric-deviation" && a["evidence"]["metric"] == "cpu.busy"
        })
    };
    let mut tries = 0;
    while deviation(&c).is_none() {
        tries += 1;
        assert!(tries < 50, "no deviation alert: {:#?}", c.alerts());
        link.send(&[d.frame(cpu_sample(195))]);
        link.ack(Duration::from_millis(300));
    }
    // Still pinned: the open alarm raises nothing more.
    link.send(&[d.frame(cpu_sample(195)), d.frame(cpu_sample(196))]);
    assert!(link.ack(Duration::from_secs(5)).is_some());
    assert_eq!(deviation(&c).unwrap()["count"], 1);

    // Killed without a chance to save: the alarm was saved when it opened.
    kill(Pid::from_raw(c.pid() as i32), Signal::SIGKILL).unwrap();
    drop(c);
    let c = Collector::start_plain(&state, &args);
    let mut link = Link::connect(c.plain.as_deref().unwrap());
    link.send(&[d.frame(cpu_sample(197))]);
    let acked = link.ack(Duration::from_secs(10)).map(|a| a.seq);
    assert_eq!(
        acked,
        Some(d.seq - 1),
        "the frame after the restart is stored"
    );
    let a = deviation(&c).unwrap();
    assert_eq!(
        a["count"], 1,
        "the anomaly in progress is not raised again after the restart: {a:#}"
    );
    let shown = show(&c, "pump");
    assert_eq!(shown["phase"], "monitoring");
    assert!(
        shown["open_alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "cpu.busy"),
        "{shown:#}"
    );
}
