//! The real `vigil-collector serve` with the real `vigil-agent` (TLS 1.3,
//! and a `socat` pty pair as the serial line), the admin CLI on the same
//! state dir, hostile frames from scripted devices, the audit catching rows
//! altered in the SQLite file, and `quickstart`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_protocol::SigningKey;
use vigil_tests::collector::{cli, Collector, Device, Link};
use vigil_tests::{binary, keygen, tempdir, Agent};

fn enroll(state: &std::path::Path, key: &str, name: &str) -> String {
    let out = cli(
        state,
        &[
            "enroll",
            "--key",
            key,
            "--name",
            name,
            "--model",
            "test-model",
        ],
    );
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn key_text(k: &vigil_protocol::VerifyingKey) -> String {
    let mut s = String::new();
    vigil_protocol::frame::write_public_key(&mut s, k).unwrap();
    s
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn frames_of(d: &Option<Value>) -> u64 {
    d.as_ref()
        .and_then(|d| d["frames_received"].as_u64())
        .unwrap_or(0)
}

fn db(c: &Collector) -> rusqlite::Connection {
    rusqlite::Connection::open(c.state.join("vigil.sqlite")).unwrap()
}

fn stored_frames(c: &Collector, device: &str) -> i64 {
    db(c)
        .query_row(
            "SELECT count(*) FROM frames f JOIN devices d ON d.num = f.device WHERE d.id = ?1",
            [device],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn agent_streams_over_tls_and_the_audit_catches_altered_rows() {
    let dir = tempdir("collector-tls");
    let (agent_dir, state) = (dir.join("agent"), dir.join("collector"));
    std::fs::create_dir_all(&agent_dir).unwrap();
    let key = keygen(&agent_dir);
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    let out = enroll(&state, &key_text(&key), "ct-scanner-01");
    assert!(out.contains(&id), "{out}");

    let c = Collector::start(&state, &["--listen", "127.0.0.1:0"]);
    let (addr, pin) = (c.tls.clone().unwrap(), c.pin.clone().unwrap());
    assert_eq!(pin.len(), 64);
    let agent = Agent::start(&[
        "--state-dir",
        agent_dir.to_str().unwrap(),
        "--collector",
        &addr,
        "--pin",
        &pin,
        "--interval-ms",
        "200",
        "--batch",
        "2",
    ]);
    // Hello, the start-up integrity, posture, socket and session frames,
    // then samples: wait for ten samples.
    let samples = |c: &Collector| {
        let out = c.cli(&["export", "--device", &id, "--format", "json"]);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).map_or(0, |r| r.len())
    };
    assert!(
        c.wait_for(Duration::from_secs(30), |c| samples(c) >= 10),
        "no frames archived: {:?}\n{}",
        c.device(&id),
        c.log()
    );
    let d = c.device(&id).unwrap();
    assert_eq!(d["name"], "ct-scanner-01");
    assert_eq!(d["model"], "test-model");
    assert_eq!(d["state"], "approved");
    assert!(d["last_seen"].as_str().unwrap().ends_with('Z'));
    let log = agent.stop().1;
    assert!(log.contains("0 frames left unacknowledged"), "{log}");

    // Samples are exported as the agent measured them.
    let out = c.cli(&[
        "export",
        "--device",
        &id,
        "--format",
        "json",
        "--from",
        "2020-01-01",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.len() >= 10, "{} samples", rows.len());
    for r in &rows {
        assert_eq!(r["memory"]["total_kib"].as_u64().unwrap(), mem_total_kib());
        assert!(
            r["network"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["iface"] == "lo"),
            "{r}"
        );
    }
    let csv = c.cli(&["export", "--device", "ct-scanner-01", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("device,time,interval_ms"), "{header}");
    let columns = header.split(',').count();
    let body: Vec<&str> = lines.collect();
    assert!(body.len() >= rows.len());
    assert!(body.iter().all(|l| l.split(',').count() == columns));

    // The device view shows the inventory and the latest sample.
    let out = c.cli(&["device", "ct-scanner-01", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inventory"]["arch"], std::env::consts::ARCH);
    assert_eq!(
        v["latest_sample"]["memory"]["total_kib"].as_u64().unwrap(),
        mem_total_kib()
    );

    // Clean archive: the audit re-verifies everything and passes.
    let out = c.cli(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" 0 problems"), "{text}");

    // A decoded row altered directly in the SQLite file.
    let (boot, seq, frame): (i64, i64, i64) = db(&c)
        .query_row(
            "SELECT f.boot, f.seq, f.id FROM frames f JOIN samples s ON s.frame = f.id
             JOIN devices d ON d.num = f.device WHERE d.id = ?1 ORDER BY f.seq DESC LIMIT 1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let n = db(&c)
        .execute(
            "UPDATE samples SET cpu_user = cpu_user + 50 WHERE frame = ?1 AND idx = 0",
            [frame],
        )
        .unwrap();
    assert_eq!(n, 1);
    let out = c.cli(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("frame {id}/{boot}/{seq}: decoded rows differ")),
        "{text}"
    );
    assert!(text.contains(" 1 problems"), "{text}");

    // A signed frame altered in place: one bit of the Hello flipped.
    let mut bytes: Vec<u8> = db(&c)
        .query_row(
            "SELECT bytes FROM frames WHERE device = (SELECT num FROM devices WHERE id = ?1)
             AND boot = ?2 AND seq = 0",
            rusqlite::params![id, boot],
            |r| r.get(0),
        )
        .unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let n = db(&c)
        .execute(
            "UPDATE frames SET bytes = ?3 WHERE device = (SELECT num FROM devices WHERE id = ?1)
             AND boot = ?2 AND seq = 0",
            rusqlite::params![id, boot, bytes],
        )
        .unwrap();
    assert_eq!(n, 1);
    let out = c.cli(&["audit", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let problems: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p == &format!("frame {id}/{boot}/0: signature does not verify")),
        "{problems:?}"
    );

    assert_eq!(c.stop(), Some(0));
}

#[test]
fn agent_streams_over_a_serial_pty_pair() {
    let dir = tempdir("collector-serial");
    let (agent_dir, state) = (dir.join("agent"), dir.join("collector"));
    std::fs::create_dir_all(&agent_dir).unwrap();
    let key = keygen(&agent_dir);
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    enroll(&state, &key_text(&key), "ecg-cart-3");
    let (a, b) = (dir.join("tty-collector"), dir.join("tty-agent"));
    let mut socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (apt-get install socat)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.exists() && b.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = Collector::start(
        &state,
        &["--no-tls", "--serial", &format!("{}:115200", a.display())],
    );
    let agent = Agent::start(&[
        "--state-dir",
        agent_dir.to_str().unwrap(),
        "--serial",
        b.to_str().unwrap(),
        "--interval-ms",
        "200",
        "--batch",
        "2",
    ]);
    // Hello, the start-up integrity and posture frames, sockets, then
    // samples: wait until at least eight samples are archived.
    let samples = |c: &Collector| {
        let out = c.cli(&["export", "--device", &id, "--format", "json"]);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).map_or(0, |r| r.len())
    };
    assert!(
        c.wait_for(Duration::from_secs(30), |c| frames_of(&c.device(&id)) >= 6
            && samples(c) >= 8),
        "no frames over serial: {:?}\n{}",
        c.device(&id),
        c.log()
    );
    let log = agent.stop().1;
    assert!(
        log.contains("0 frames left unacknowledged"),
        "acks did not reach the agent:\n{log}"
    );
    let d = c.device(&id).unwrap();
    assert!(d["acked_seq"].as_u64().unwrap() >= 5, "{d}");
    let out = c.cli(&["export", "--device", &id, "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.len() >= 8, "{}", rows.len());
    assert_eq!(c.cli(&["audit"]).status.code(), Some(0));
    assert_eq!(c.stop(), Some(0));
    let _ = socat.kill();
    let _ = socat.wait();
}

#[test]
fn forged_replayed_unknown_and_revoked_frames_are_rejected_and_alerted() {
    let dir = tempdir("collector-hostile");
    let state = dir.join("collector");
    let alerts_file = dir.join("alerts.jsonl");
    let mut dev = Device::new(1);
    enroll(&state, &dev.public_key(), "mri-1");
    let c = Collector::start_plain(&state, &["--sink-json", alerts_file.to_str().unwrap()]);
    let addr = c.plain.clone().unwrap();
    assert!(c.log().contains("INSECURE"), "{}", c.log());
    let id = dev.id();

    // A well-behaved session: Hello and three sample frames, acked to 3.
    let hello = dev.hello_body();
    let captured: Vec<Vec<u8>> = vec![
        dev.frame(hello),
        dev.frame(dev.sample_body(2)),
        dev.frame(dev.sample_body(2)),
        dev.frame(dev.sample_body(2)),
    ];
    let mut link = Link::connect(&addr);
    link.send(&captured);
    let ack = link.ack(Duration::from_secs(5)).expect("ack");
    assert_eq!((ack.boot, ack.seq), (1, 3));
    assert_eq!(stored_frames(&c, &id), 4);

    // Forged: claims the device, signed by another key. Not stored, not acked.
    let forged = dev.frame_signed_by(dev.sample_body(1), &SigningKey::from_bytes(&[9; 32]));
    link.send(&[forged]);
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alert("transport.bad-signature")
        .is_some()));
    let a = c.alert("transport.bad-signature").unwrap();
    assert_eq!(a["device"], id.as_str());
    assert_eq!(a["severity"], "high");
    assert_eq!(stored_frames(&c, &id), 4);
    drop(link);

    // Replayed capture on a new connection: duplicates, acked again, stored once.
    let mut link = Link::connect(&addr);
    link.send(&captured);
    let ack = link
        .ack(Duration::from_secs(5))
        .expect("ack for the resend");
    assert_eq!(ack.seq, 3);
    assert_eq!(stored_frames(&c, &id), 4);
    // Backwards on the same connection (the agent's go-back-N resend): a
    // duplicate, acked again, stored once, no alert.
    link.send(&[captured[1].clone()]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(3));
    assert_eq!(stored_frames(&c, &id), 4);
    drop(link);

    // A frame of an older boot after a newer one: stale, a replay.
    dev.boot = 2;
    dev.seq = 0;
    let hello2 = dev.hello_body();
    let b2 = dev.frame(hello2);
    let mut link = Link::connect(&addr);
    link.send(&[b2]);
    assert_eq!(
        link.ack(Duration::from_secs(5)).map(|a| (a.boot, a.seq)),
        Some((2, 0))
    );
    drop(link);
    let mut link = Link::connect(&addr);
    link.send(&[captured[0].clone()]);
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.alerts().iter().any(|a| a
            ["rule"]
            == "transport.replay"
            && a["evidence"]["seen"]
                .as_str()
                .unwrap_or("")
                .contains("older boot")))
    );
    // The reboot itself was noticed (the scripted Hello changes boot id).
    assert!(c.alert("device.reboot").is_some(), "{:?}", c.alerts());
    drop(link);

    // An unknown key sending samples: rejected, alerted, disconnected.
    let mut stranger = Device::new(2);
    let mut link = Link::connect(&addr);
    link.send(&[stranger.frame(stranger.sample_body(1))]);
    assert!(link.closed(Duration::from_secs(5)));
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alert("enrollment.unknown-device")
        .is_some()));
    assert!(c.device(&stranger.id()).is_none());

    // A new device with a valid self-signed Hello: pending, nothing stored.
    let mut newcomer = Device::new(3);
    let nid = newcomer.id();
    let h = newcomer.frame(newcomer.hello_body());
    let s1 = newcomer.frame(newcomer.sample_body(1));
    let mut link = Link::connect(&addr);
    link.send(&[h.clone(), s1.clone()]);
    assert_eq!(link.ack(Duration::from_secs(2)), None);
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .device(&nid)
        .is_some_and(|d| d["state"] == "pending")));
    assert!(c.alert("enrollment.pending").is_some());
    assert_eq!(stored_frames(&c, &nid), 0);
    // Approved while serve runs: the resend is accepted.
    let out = c.cli(&["approve", &nid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = c.wait_for(Duration::from_secs(10), |_| {
        let mut link = Link::connect(&addr);
        link.send(&[h.clone(), s1.clone()]);
        link.ack(Duration::from_secs(1)).is_some_and(|a| a.seq == 1)
    });
    assert!(ok, "approved device not accepted:\n{}", c.log());
    assert_eq!(stored_frames(&c, &nid), 2);

    // Revoked while serve runs: rejected at once, alerted.
    let out = c.cli(&["revoke", "mri-1"]);
    assert!(out.status.success());
    let ok = c.wait_for(Duration::from_secs(10), |_| {
        let mut link = Link::connect(&addr);
        link.send(&[dev.frame(dev.sample_body(1))]);
        link.closed(Duration::from_secs(1))
    });
    assert!(ok);
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alert("enrollment.revoked-device")
        .is_some()));

    // Repeated occurrences update one alert.
    let bad_sig: Vec<Value> = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "transport.bad-signature")
        .collect();
    assert_eq!(bad_sig.len(), 1);

    // ack / resolve change state, and every admin action is audited.
    let aid = bad_sig[0]["id"].as_i64().unwrap().to_string();
    assert!(c.cli(&["ack", &aid]).status.success());
    assert!(c.cli(&["resolve", &aid]).status.success());
    let open = c.cli(&["alerts", "--open", "--json"]);
    let open: Vec<Value> = serde_json::from_slice(&open.stdout).unwrap();
    assert!(open
        .iter()
        .all(|a| a["id"].as_i64().unwrap().to_string() != aid));
    let admin = c.cli(&["admin-log", "--json"]);
    let admin: Vec<Value> = serde_json::from_slice(&admin.stdout).unwrap();
    let actions: Vec<&str> = admin
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["enroll", "approve", "revoke", "ack", "resolve"]);

    // The JSON sink received the alerts and the audit events.
    let ok = c.wait_for(Duration::from_secs(10), |_| {
        let text = std::fs::read_to_string(&alerts_file).unwrap_or_default();
        text.contains("\"rule\":\"enrollment.revoked-device\"")
            && text.contains("\"action\":\"resolve\"")
    });
    assert!(
        ok,
        "{}",
        std::fs::read_to_string(&alerts_file).unwrap_or_default()
    );
    for line in std::fs::read_to_string(&alerts_file).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["type"] == "alert" || v["type"] == "audit", "{v}");
    }
    assert_eq!(c.cli(&["audit"]).status.code(), Some(0));
    assert_eq!(c.stop(), Some(0));
}

#[test]
fn bad_configuration_exits_78_naming_the_field() {
    let dir = tempdir("collector-config");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nlisten_port = 3\n").unwrap();
    let out = Command::new(binary("vigil-collector"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
    let out = Command::new(binary("vigil-collector"))
        .args([
            "serve",
            "--state-dir",
            dir.to_str().unwrap(),
            "--plain-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("insecure_plaintext"));
    let out = cli(&dir, &["enroll", "--key", "ed25519:nope", "--name", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"));
}

#[test]
fn quickstart_streams_a_local_agent() {
    let out = Command::new(binary("vigil-collector"))
        .args(["quickstart", "--duration-s", "6"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("approved"), "{text}");
    assert!(
        text.contains("mem avail"),
        "no sample in the live view:\n{text}"
    );
    let state = text
        .lines()
        .find_map(|l| l.strip_prefix("State kept in "))
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let state = std::path::Path::new(&state).join("collector");
    assert_eq!(cli(&state, &["audit"]).status.code(), Some(0));
    let _ = std::fs::remove_dir_all(state.parent().unwrap());
}

#[test]
fn holes_are_alerted_as_loss_gaps_explain_them_and_silence_is_noticed() {
    use vigil_protocol::body::{Gap, GapReason, SeqRange};
    use vigil_protocol::{Body, BodyKind};
    let dir = tempdir("collector-loss");
    let state = dir.join("collector");
    let mut dev = Device::new(11);
    enroll(&state, &dev.public_key(), "xray-2");
    let c = Collector::start_plain(&state, &["--loss-grace-s", "1", "--silence-s", "3"]);
    let addr = c.plain.clone().unwrap();
    let id = dev.id();
    let hello = dev.hello_body();
    let f0 = dev.frame(hello);
    let f1 = dev.frame(dev.sample_body(1));
    let (f2, f3, f4) = (
        dev.frame(dev.sample_body(1)),
        dev.frame(dev.sample_body(1)),
        dev.frame(dev.sample_body(1)),
    );
    let f5 = dev.frame(dev.sample_body(1));
    // 2..=4 never arrive: the ack stays at 1 and, after the grace, loss is alerted.
    let mut link = Link::connect(&addr);
    link.send(&[f0, f1, f5]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(1));
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alert("transport.sequence-loss")
        .is_some()));
    let a = c.alert("transport.sequence-loss").unwrap();
    assert_eq!(a["evidence"]["missing_from"], 2);
    assert_eq!(a["evidence"]["missing_to"], 4);
    // A resend of 2 fills part of the hole.
    let mut link = Link::connect(&addr);
    link.send(&[f2]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(2));
    drop((f3, f4));
    // The agent says it dropped 3..=4: explained, the ack moves past them.
    let gap = Body::Gap(Gap {
        reason: GapReason::QueueFull,
        kind: BodyKind::Samples,
        samples: 2,
        ranges: heapless::Vec::from_slice(&[SeqRange { first: 3, count: 2 }]).unwrap(),
    });
    link.send(&[dev.frame(gap)]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(6));
    let g = c.alert("transport.agent-gap").expect("gap alert");
    assert_eq!(g["evidence"]["dropped_samples"], 2);
    assert_eq!(g["evidence"]["dropped_frames"], 2);
    drop(link);
    // Silence: nothing for more than 3 s.
    assert!(
        c.wait_for(Duration::from_secs(15), |c| c.alerts().iter().any(|a| a
            ["rule"]
            == "device.silence"
            && a["device"] == id.as_str()
            && a["state"] == "open"))
    );
    // It ends when the device speaks again.
    let mut link = Link::connect(&addr);
    link.send(&[dev.frame(dev.sample_body(1))]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(7));
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alerts()
        .iter()
        .any(|a| a["rule"] == "device.silence" && a["state"] == "resolved")));
    assert_eq!(c.cli(&["audit"]).status.code(), Some(0));
    assert_eq!(c.stop(), Some(0));
}

/// An archive file that cannot be the archive (empty, cut off, someone
/// else's SQLite) is refused by `serve` and `audit` alike, never taken for
/// a new empty one; `serve --new` moves it aside, keeps it, and starts a
/// new one; whatever the umask, the state dir is 0700 and its files 0600.
#[test]
fn an_unusable_archive_is_refused_and_the_state_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("unusable-archive");
    // A real archive with frames, then cut to 1 % of its length.
    let real = dir.join("real");
    let mut d = Device::new(31);
    vigil_tests::collector::enroll(&real, &d.key.verifying_key(), "cut", "");
    let c = Collector::start_plain(&real, &[]);
    let mut link = Link::connect(c.plain.as_deref().unwrap());
    let hello = d.hello_body();
    let mut frames = vec![d.frame(hello)];
    for _ in 0..50 {
        let b = d.sample_body(1);
        frames.push(d.frame(b));
    }
    link.send(&frames);
    let deadline = Instant::now() + Duration::from_secs(30);
    while link.ack(Duration::from_secs(5)).map(|a| a.seq) != Some(50) {
        assert!(Instant::now() < deadline, "the 51 frames were not acked");
    }
    drop(link);
    assert_eq!(c.stop(), Some(0));
    let db = real.join("vigil.sqlite");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 100)
        .unwrap();
    let _ = std::fs::remove_file(real.join("vigil.sqlite-wal"));
    let _ = std::fs::remove_file(real.join("vigil.sqlite-shm"));

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("vigil.sqlite"), b"").unwrap();
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    rusqlite::Connection::open(foreign.join("vigil.sqlite"))
        .unwrap()
        .execute_batch("CREATE TABLE patients(name TEXT); INSERT INTO patients VALUES ('x');")
        .unwrap();

    let serve = |state: &std::path::Path, extra: &[&str]| {
        // As if started from a shell with umask 000.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(binary("vigil-collector"))
            .arg("serve")
            .arg("--state-dir")
            .arg(state)
            .args([
                "--no-tls",
                "--plain-listen",
                "127.0.0.1:0",
                "--insecure-plaintext",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    for (state, why) in [
        (&empty, "the archive file is empty"),
        (&real, "the file is cut off"),
        (&foreign, "not a Vigil archive"),
    ] {
        let out = serve(state, &[]).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", state.display());
        assert!(err.contains(why) && err.contains("--new"), "{err}");
        let out = cli(state, &["audit"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "audit of {}: {err}",
            state.display()
        );
        assert!(err.contains(why), "{err}");
    }
    // The foreign file was not touched: no tables of ours were added.
    let tables: i64 = rusqlite::Connection::open(foreign.join("vigil.sqlite"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);

    // --new: the cut file moves aside (kept), a new archive starts, private.
    let mut child = serve(&real, &["--new"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let ready = loop {
        line.clear();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            break false;
        }
        if line.trim() == "ready" {
            break true;
        }
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(ready, "{}", String::from_utf8_lossy(&out.stderr));
    let aside: Vec<_> = std::fs::read_dir(&real)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("vigil.sqlite.refused-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the refused file is kept");
    assert_eq!(aside[0].metadata().unwrap().len(), len / 100);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&real), 0o700);
    assert_eq!(mode(&real.join("vigil.sqlite")), 0o600);
    assert_eq!(cli(&real, &["audit"]).status.code(), Some(0));
}
