//! The real `vigil-collector serve` with the real `vigil-agent` (TLS 1.3,
//! and a `socat` pty pair as the serial line), the admin CLI on the same
//! state dir, hostile frames from scripted devices, the audit catching rows
//! altered in the SQLite file, and `quickstart`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_protocol::SigningKey;
use vigil_tests::collector::{cli, now_ms, Collector, Device, Link};
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
    // Deep nesting (a recursive parser's stack), a FIFO (a read that never
    // ends) and a file past 1 MiB: each refused with its reason, exit 78.
    let fifo = dir.join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = dir.join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(1 << 20))).unwrap();
    std::fs::write(&cfg, format!("listen = {}", "[".repeat(100_000))).unwrap();
    for (file, why) in [
        (&cfg, "nested deeper than 32"),
        (&fifo, "not a regular file"),
        (&big, "larger than 1048576 bytes"),
    ] {
        for bin in ["vigil-collector", "vigil-agent"] {
            let cmd = if bin == "vigil-agent" {
                "check"
            } else {
                "serve"
            };
            let out = Command::new(binary(bin))
                .args([cmd, "--config", file.to_str().unwrap()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{bin} {file:?}: {stderr}");
            assert!(stderr.contains(why), "{bin} {file:?}: {stderr}");
        }
    }
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
    // A Gap that also names frames which did arrive (the agent's queue
    // evicted them after writing them, before their ack came): only the
    // rest are lost, and a Gap whose frames all arrived raises nothing.
    let (f7, f8) = (dev.frame(dev.sample_body(1)), dev.frame(dev.sample_body(1)));
    let _never_sent = dev.frame(dev.sample_body(1));
    link.send(&[f7, f8]);
    let gap = |first, count| {
        Body::Gap(Gap {
            reason: GapReason::QueueFull,
            kind: BodyKind::Samples,
            samples: count,
            ranges: heapless::Vec::from_slice(&[SeqRange { first, count }]).unwrap(),
        })
    };
    link.send(&[dev.frame(gap(7, 3))]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(10));
    let gaps = |c: &Collector| -> Vec<Value> {
        c.alerts()
            .into_iter()
            .filter(|a| a["rule"] == "transport.agent-gap")
            .collect()
    };
    let partly = gaps(&c);
    let partly = partly
        .iter()
        .find(|a| a["evidence"]["named_frames"] == 3)
        .expect("the second Gap's alert");
    assert_eq!(partly["evidence"]["dropped_frames"], 1, "{partly:#}");
    assert_eq!(partly["evidence"]["named_but_stored"], 2);
    assert_eq!(partly["evidence"]["dropped_samples"], 1);
    let f11 = dev.frame(dev.sample_body(1));
    link.send(&[f11]);
    link.send(&[dev.frame(gap(11, 1))]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(12));
    assert_eq!(
        gaps(&c).len(),
        2,
        "a Gap of frames that all arrived is no alert"
    );
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
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(13));
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
fn device_clocks_are_checked_and_numbers_beyond_the_archive_are_refused() {
    let dir = tempdir("collector-clocks");
    let state = dir.join("collector");
    let mut slow = Device::new(21); // an RTC-less board that thinks it is 1970
    let mut fast = Device::new(22); // a clock set to 2100
    let mut huge = Device::new(23); // sequence numbers past 2^63
    for (d, name) in [
        (&slow, "rtc-less"),
        (&fast, "far-ahead"),
        (&huge, "huge-seq"),
    ] {
        enroll(&state, &d.public_key(), name);
    }
    let c = Collector::start_plain(
        &state,
        &["--clock-skew-s", "60", "--metrics-listen", "127.0.0.1:0"],
    );
    let addr = c.plain.clone().unwrap();
    let metrics = c.metrics.clone().unwrap();

    // Behind: a steady stream whose times run at the right rate from 1970.
    // Judged on live frames only, so the first ones raise nothing.
    let epoch_offset = now_ms() - 1_000;
    let mut link = Link::connect(&addr);
    let hello = slow.hello_body();
    link.send(&[slow.frame_dated(hello, now_ms() - epoch_offset)]);
    let mut acked = None;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1_100));
        let f = slow.frame_dated(slow.sample_body(1), now_ms() - epoch_offset);
        link.send(&[f]);
        acked = link.ack(Duration::from_secs(5)).map(|a| a.seq);
    }
    assert_eq!(acked, Some(5), "frames of a wrong clock are kept and acked");
    assert!(c.wait_for(Duration::from_secs(10), |c| c
        .alerts()
        .iter()
        .any(
            |a| a["rule"] == "device.clock-skew" && a["device"] == slow.id().as_str()
        )));
    let a = c
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "device.clock-skew" && a["device"] == slow.id().as_str())
        .unwrap();
    assert_eq!(a["evidence"]["direction"], "behind", "{a:#}");
    let skew = a["evidence"]["skew_s"].as_i64().unwrap();
    let expected = -i64::try_from(epoch_offset / 1000).unwrap();
    assert!((skew - expected).abs() <= 5, "{skew} vs {expected}");
    assert!(a["evidence"]["device_time"]
        .as_str()
        .unwrap()
        .starts_with("1970-01-01"));

    // Ahead: 2100, raised at once; an absurd time is refused (never acked).
    let in_2100 = 4_102_444_800_000;
    let mut link = Link::connect(&addr);
    let hello = fast.hello_body();
    link.send(&[fast.frame_dated(hello, in_2100)]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(0));
    let f = fast.frame_dated(fast.sample_body(1), u64::MAX);
    link.send(&[f]);
    assert_eq!(
        link.ack(Duration::from_secs(2)),
        None,
        "a time past 9999 is not acked"
    );
    let ahead = c
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "device.clock-skew" && a["device"] == fast.id().as_str())
        .expect("a clock in 2100 is raised at its first frame");
    assert_eq!(ahead["evidence"]["direction"], "ahead");

    // 2^63 and 2^63 + 1 fit no SQLite integer: refused with a reason, and
    // the archive (and `audit`) is untouched.
    let mut link = Link::connect(&addr);
    let hello = huge.hello_body();
    link.send(&[huge.frame(hello)]);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(0));
    huge.seq = 1 << 63;
    let (a, b) = (
        huge.frame(huge.sample_body(1)),
        huge.frame(huge.sample_body(1)),
    );
    link.send(&[a, b]);
    assert_eq!(link.ack(Duration::from_secs(2)), None);
    assert!(c.wait_for(Duration::from_secs(10), |_| {
        let body = vigil_tests::collector::scrape(&metrics);
        body.lines()
            .any(|l| l == "vigil_collector_frames_rejected_total{reason=\"out_of_range\"} 3")
    }));
    let refused: Vec<Value> = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "transport.out-of-range")
        .collect();
    assert_eq!(refused.len(), 2, "one alert per device: {refused:#?}");
    assert!(refused.iter().any(|a| a["evidence"]["seen"]
        .as_str()
        .unwrap()
        .contains("beyond 2^63-1")));
    assert_eq!(stored_frames(&c, &huge.id()), 1, "only the Hello");
    assert_eq!(stored_frames(&c, &fast.id()), 1, "only the Hello");
    drop(link);
    c.stop();
    let audit = vigil_tests::collector::cli(&state, &["audit"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

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

#[test]
fn serve_tells_the_service_manager_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempdir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let env_notify = format!("NOTIFY_SOCKET={}", path.display());
    let c = Collector::start_with(
        &["env", &env_notify, "WATCHDOG_USEC=1000000"],
        &dir.join("collector"),
        &[
            "--plain-listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--no-tls",
        ],
    );
    let mut buf = [0u8; 256];
    let mut next = || -> String {
        let n = sock.recv(&mut buf).expect("no notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\n"), "{first}");
    // WatchdogSec=1s: a ping each half second while the writer ticks.
    for _ in 0..3 {
        let m = next();
        assert_eq!(m, "WATCHDOG=1");
    }
    assert_eq!(c.stop(), Some(0));
    let mut last = Vec::new();
    loop {
        let m = next();
        let stopping = m == "STOPPING=1";
        last.push(m);
        if stopping {
            break;
        }
        assert!(last.len() < 20, "no STOPPING=1: {last:?}");
    }
}

/// Acked means durable, and what is not is named: frames acked while a
/// reader pins the WAL (no checkpoint can copy them into the database),
/// a SIGKILL, one byte of the WAL changed. SQLite's recovery silently cuts
/// the WAL at the damaged frame; the ack ledger beside the archive names
/// the acked frames that went with it as `collector.archive-loss`, once,
/// the ack moves on (the agent dropped those frames when they were acked)
/// and no transport alert blames the network. A damaged database page is
/// refused at open by `quick_check`; `--new` moves it aside.
#[test]
fn acked_frames_lost_in_wal_recovery_are_named_as_archive_loss() {
    let dir = tempdir("collector-wal");
    let state = dir.join("collector");
    let mut dev = Device::new(41);
    enroll(&state, &dev.public_key(), "ct-4");
    let args = ["--loss-grace-s", "1"];
    let c = Collector::start_plain(&state, &args);
    let addr = c.plain.clone().unwrap();
    let id = dev.id();
    let mut link = Link::connect(&addr);
    let hello = dev.hello_body();
    let mut early = vec![dev.frame(hello)];
    for _ in 0..9 {
        early.push(dev.frame(dev.sample_body(1)));
    }
    link.send(&early);
    let acked_to = |link: &mut Link, seq: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while link.ack(Duration::from_secs(5)).map(|a| a.seq) != Some(seq) {
            assert!(Instant::now() < deadline, "no ack of {seq}");
        }
    };
    acked_to(&mut link, 9);
    // A reader in another process pins the WAL: from here on nothing is
    // copied into the database file.
    let db_path = state.join("vigil.sqlite");
    let mut reader = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN')\n\
             n = c.execute('SELECT count(*) FROM frames').fetchone()[0]\n\
             print(n, flush=True)\n\
             sys.stdin.read()\n",
        )
        .arg(&db_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 holds a read transaction");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reader.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "10", "the reader sees the first 10 frames");
    let mut late = Vec::new();
    for _ in 0..50 {
        late.push(dev.frame(dev.sample_body(1)));
    }
    link.send(&late);
    acked_to(&mut link, 59);
    drop(link);
    // Both die without closing (a closing last connection would copy the
    // WAL back); then one byte of the WAL's first frame changes.
    c.kill();
    let _ = reader.kill();
    let _ = reader.wait();
    let wal = state.join("vigil.sqlite-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 32 + 24 + 200, "the WAL holds frames");
    bytes[32 + 24 + 100] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();

    let c = Collector::start_plain(&state, &args);
    let loss = c
        .alert("collector.archive-loss")
        .expect("archive loss alerted");
    let ev = &loss["evidence"];
    let kept = stored_frames(&c, &id);
    eprintln!(
        "WAL damaged: {kept} frames survived, {} named lost",
        ev["lost_frames"]
    );
    assert!(kept <= 10, "{kept} frames survived the damaged WAL");
    assert_eq!(loss["device"], id.as_str(), "{loss:#}");
    assert_eq!(loss["severity"], "high");
    assert_eq!(ev["missing_to"], 59, "{loss:#}");
    assert_eq!(ev["missing_from"], kept, "{loss:#}");
    assert_eq!(ev["lost_frames"], 60 - kept, "{loss:#}");
    assert!(
        c.log().contains("archive loss: device"),
        "logged as an error:\n{}",
        c.log()
    );
    // The ack moves on: the device's next frame is acked at once.
    let addr = c.plain.clone().unwrap();
    let mut link = Link::connect(&addr);
    link.send(&[dev.frame(dev.sample_body(1))]);
    assert_eq!(link.ack(Duration::from_secs(10)).map(|a| a.seq), Some(60));
    drop(link);
    // Named once: a restart finds the ledger and the archive agreeing.
    assert_eq!(c.stop(), Some(0));
    let c = Collector::start_plain(&state, &args);
    let mut link = Link::connect(c.plain.as_deref().unwrap());
    link.send(&[dev.frame(dev.sample_body(1))]);
    assert_eq!(link.ack(Duration::from_secs(10)).map(|a| a.seq), Some(61));
    drop(link);
    let losses: Vec<Value> = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "collector.archive-loss")
        .collect();
    assert_eq!(losses.len(), 1, "{losses:#?}");
    assert_eq!(losses[0]["count"], 1, "{losses:#?}");
    let transport = vigil_tests::collector::transport_alerts(&state);
    assert!(transport.is_empty(), "{transport:#?}");
    // `audit` takes the named loss as explained.
    let audit = c.cli(&["audit"]);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    assert_eq!(c.stop(), Some(0));

    // A damaged page of the database itself: refused at open, naming it.
    let mut bytes = std::fs::read(&db_path).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let page = if page == 1 { 65_536 } else { page };
    assert!(bytes.len() >= 3 * page);
    // Page 2's b-tree header: its page type and cell count.
    for b in &mut bytes[page..page + 8] {
        *b = 0xee;
    }
    std::fs::write(&db_path, &bytes).unwrap();
    let _ = std::fs::remove_file(state.join("vigil.sqlite-wal"));
    let _ = std::fs::remove_file(state.join("vigil.sqlite-shm"));
    let out = Command::new(binary("vigil-collector"))
        .args(["serve", "--state-dir"])
        .arg(&state)
        .args([
            "--no-tls",
            "--plain-listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        (err.contains("quick_check") || err.contains("malformed")) && err.contains("--new"),
        "{err}"
    );
    // --new: moved aside (kept), a new archive and a new ledger begin, and
    // the old ledger is not taken for loss in the new archive.
    let mut new_args = args.to_vec();
    new_args.push("--new");
    let c = Collector::start_plain(&state, &new_args);
    assert!(c.alert("collector.archive-loss").is_none());
    assert!(c.log().contains("moved aside"), "{}", c.log());
    assert_eq!(c.stop(), Some(0));
}

/// Enrollment cannot be jammed: a flood of junk self-signed Hellos (new
/// keys, so each is a valid would-be device) from 3 addresses as fast as
/// they connect (120 each) and from 40 more one each, beside a genuine new device
/// that starts once the flood is under way: it still shows as pending.
/// Each address keeps at most 4 pending (the newest replace the oldest),
/// and the pressure is one `enrollment.unknown-pressure` alert.
#[test]
fn a_junk_hello_flood_does_not_keep_a_genuine_device_from_pending() {
    use std::net::Ipv4Addr;
    let dir = tempdir("collector-enroll-flood");
    let state = dir.join("collector");
    // 30 a minute from one address (the default is 4): the pending cap per
    // address, not the budget, is what holds the heavy flooders then.
    let c = Collector::start_plain(&state, &["--unknown-per-address-per-minute", "30"]);
    let addr = c.plain.clone().unwrap();
    let junk = |src: u8, n: u32| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                let mut k = [0xa5u8; 32];
                k[0] = src;
                k[1..5].copy_from_slice(&i.to_le_bytes());
                let mut d = Device::from_key(SigningKey::from_bytes(&k));
                let mut l = Link::connect_from(&addr, Ipv4Addr::new(127, 0, 0, src));
                let h = d.hello_body();
                l.send(&[d.frame(h)]);
                l.closed(Duration::from_secs(10));
            }
        })
    };
    let mut floods: Vec<_> = (2..=4).map(|a| junk(a, 120)).collect();
    floods.extend((10..50).map(|a| junk(a, 1)));
    assert!(
        c.wait_for(Duration::from_secs(60), |c| c
            .alert("enrollment.unknown-pressure")
            .is_some()),
        "no pressure alert under the flood"
    );
    let mut genuine = Device::new(77);
    let started = Instant::now();
    let mut l = Link::connect_from(&addr, Ipv4Addr::new(127, 0, 0, 9));
    let h = genuine.hello_body();
    l.send(&[genuine.frame(h)]);
    assert!(
        l.closed(Duration::from_secs(10)),
        "told it is pending and closed"
    );
    let id = genuine.id();
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c
            .device(&id)
            .is_some_and(|d| d["state"] == "pending")),
        "the genuine device is not pending under the flood"
    );
    let took = started.elapsed();
    for f in floods {
        f.join().unwrap();
    }
    let pending: Vec<Value> = c
        .devices()
        .into_iter()
        .filter(|d| d["state"] == "pending")
        .collect();
    // Where each pending device's Hello came from, as the archive has it.
    let mut by_address: std::collections::BTreeMap<String, usize> = Default::default();
    let peers: Vec<String> = db(&c)
        .prepare("SELECT peer FROM devices WHERE state = 'pending'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(peers.len(), pending.len());
    for peer in peers {
        let a = peer
            .rsplit_once(':')
            .map_or(peer.clone(), |(a, _)| a.to_string());
        *by_address.entry(a).or_default() += 1;
    }
    let pressure = c.alert("enrollment.unknown-pressure").unwrap();
    eprintln!(
        "flood of 400 junk Hellos from 43 addresses: the genuine device pending {took:.1?} after it connected; \
         {} pending in all, per flooding address {:?}; pressure alert count {}, top {}",
        pending.len(),
        (2..=4)
            .map(|a| by_address.get(&format!("127.0.0.{a}")).copied().unwrap_or(0))
            .collect::<Vec<_>>(),
        pressure["count"],
        pressure["evidence"]["top"]
    );
    assert!(pending.iter().any(|d| d["id"] == id.as_str()));
    assert!(
        c.log().contains("replaced by"),
        "no pending device was replaced by a newer one from its address:\n{}",
        c.log()
    );
    assert!(
        by_address.values().all(|&n| n <= 4),
        "an address holds more than 4 pending: {by_address:?}"
    );
    assert_eq!(pressure["severity"], "medium");
    assert_eq!(c.cli(&["audit"]).status.code(), Some(0));
    assert_eq!(c.stop(), Some(0));
}

/// Fair share: one enrolled device flooding on 8 connections as fast as
/// they take frames, beside a bystander sending a frame every 50 ms. The
/// flooder's connections share one budget (`device_frames_per_s`, 500 by
/// default): it is slowed, not dropped, raises one `device.flood`, and
/// stores at most about its budget; every bystander frame is acked (its
/// ack p99 is printed, before and under the flood); and 64 connections at
/// most are taken from one address.
#[test]
fn a_flooding_device_is_held_to_its_budget_and_bystanders_are_served() {
    use std::io::{Read, Write};
    const FLOOD: Duration = Duration::from_secs(10);
    let dir = tempdir("collector-flood");
    let state = dir.join("collector");
    let mut flooder = Device::new(51);
    let mut bystander = Device::new(52);
    enroll(&state, &flooder.public_key(), "compromised");
    enroll(&state, &bystander.public_key(), "bystander");
    let c = Collector::start_plain(
        &state,
        &[
            "--max-connections-per-address",
            "64",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = c.plain.clone().unwrap();
    let metrics = c.metrics.clone().unwrap();
    let metric = |name: &str| vigil_tests::collector::metric(&metrics, name);
    let metrics_db = state.join("vigil.sqlite");
    let archive_bytes = || {
        ["", "-wal"]
            .iter()
            .map(|s| {
                let mut p = metrics_db.clone().into_os_string();
                p.push(s);
                std::fs::metadata(p).map_or(0, |m| m.len())
            })
            .sum::<u64>()
    };
    // The bystander's ack latency: a frame every 50 ms, each waited for.
    let probe = |link: &mut Link, dev: &mut Device, until: Instant| -> Vec<Duration> {
        let mut lat = Vec::new();
        while Instant::now() < until {
            let f = dev.frame(dev.sample_body(1));
            let seq = dev.seq - 1;
            link.send(&[f]);
            let l = link
                .ack_of(seq, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("bystander frame {seq} not acked"));
            lat.push(l);
            std::thread::sleep(Duration::from_millis(50));
        }
        lat
    };
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let mut by = Link::connect(&addr);
    let h = bystander.hello_body();
    by.send(&[bystander.frame(h)]);
    assert!(by.ack_of(0, Duration::from_secs(10)).is_some());
    let quiet = probe(
        &mut by,
        &mut bystander,
        Instant::now() + Duration::from_secs(3),
    );

    // The flood: frames signed beforehand, dealt round-robin to 8
    // connections (each in order), written as fast as they are taken.
    let h = flooder.hello_body();
    let mut first = Link::connect(&addr);
    first.send(&[flooder.frame(h)]);
    assert!(first.ack_of(0, Duration::from_secs(10)).is_some());
    drop(first);
    let mut lanes: Vec<Vec<u8>> = vec![Vec::new(); 8];
    for i in 0..8 * 2500 {
        let f = flooder.frame(flooder.sample_body(1));
        lanes[i % 8].extend_from_slice(&vigil_protocol::frame::to_wire(&f).unwrap());
    }
    eprintln!(
        "flood frames: {} bytes each on the wire",
        lanes.iter().map(Vec::len).sum::<usize>() / (8 * 2500)
    );
    let bytes_before = archive_bytes();
    let stored_before = stored_frames(&c, &flooder.id());
    let began = Instant::now();
    let until = began + FLOOD;
    let floods: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                let mut r = s.try_clone().unwrap();
                let drain = std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while matches!(r.read(&mut b), Ok(n) if n > 0) {}
                });
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut at = 0;
                while at < lane.len() && Instant::now() < until {
                    let end = (at + 8192).min(lane.len());
                    match s.write(&lane[at..end]) {
                        Ok(n) => at += n,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) => {
                            eprintln!("flood lane: {e} after {at} bytes");
                            break;
                        }
                    }
                }
                // Everything may sit in the socket buffers by now: the
                // flood lasts until the deadline, then ends abruptly.
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                let _ = s.shutdown(std::net::Shutdown::Both);
                let _ = drain.join();
            })
        })
        .collect();
    let loaded = probe(&mut by, &mut bystander, until);
    for f in floods {
        f.join().unwrap();
    }
    let secs = began.elapsed().as_secs_f64();
    let stored = stored_frames(&c, &flooder.id()) - stored_before;
    let grew = archive_bytes().saturating_sub(bytes_before);
    let flood = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "device.flood")
        .collect::<Vec<_>>();
    eprintln!(
        "flooder on 8 connections for {secs:.1} s: {stored} frames stored ({:.0}/s, budget 500/s), \
         archive +{:.1} MiB ({:.1} GiB/h at that rate); bystander ack p99 {:.1?} quiet ({} frames), \
         {:.1?} under the flood ({} frames); device.flood alerts {}",
        stored as f64 / secs,
        grew as f64 / 1_048_576.0,
        grew as f64 / secs * 3600.0 / 1_073_741_824.0,
        p99(quiet.clone()),
        quiet.len(),
        p99(loaded.clone()),
        loaded.len(),
        flood.len()
    );
    // At most the budget for each second begun, plus one read (16 KiB,
    // 128 of these frames) per connection taken before the budget ran out:
    // a loaded machine only lowers it.
    let bound = 500.0 * (secs.ceil() + 1.0) + 8.0 * 128.0;
    assert!(
        (stored as f64) <= bound,
        "{stored} frames stored in {secs:.1} s (at most {bound})"
    );
    assert!(stored > 0, "the flooder was throttled, not cut off");
    assert_eq!(flood.len(), 1, "{flood:#?}");
    assert_eq!(flood[0]["device"], flooder.id().as_str());
    assert!(!loaded.is_empty());

    // One address: the 65th connection at once is refused, the 64 before
    // it are kept.
    drop(by);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("vigil_collector_connections_open") > 0.0 {
        assert!(Instant::now() < deadline, "connections still open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused0 = metric("vigil_collector_connections_refused_total");
    let held: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    let closed = matches!(extra.read(&mut b), Ok(0) | Err(_));
    let _ = extra.write_all(b"x");
    assert!(closed, "a 65th connection from one address was kept");
    assert_eq!(
        metric("vigil_collector_connections_refused_total") - refused0,
        1.0,
        "exactly the 65th refused"
    );
    drop(held);
    assert_eq!(c.cli(&["audit"]).status.code(), Some(0));
    assert_eq!(c.stop(), Some(0));
}

/// A manifest the device checked before and its next Hello no longer
/// names (a configuration edited to drop it, the file removed before the
/// agent started) is alerted, baseline or not; a new version of the same
/// manifest is not, an older one than the highest seen is a rollback.
#[test]
fn a_manifest_no_longer_in_force_is_alerted() {
    use vigil_protocol::body::{Class, ManifestVersion};
    let dir = tempdir("collector-manifest-gone");
    let state = dir.join("collector");
    let mut dev = Device::new(61);
    enroll(&state, &dev.public_key(), "mri-1");
    let c = Collector::start_plain(&state, &[]);
    let addr = c.plain.clone().unwrap();
    let hello = |dev: &Device, versions: &[(&str, u64)]| {
        let mut h = dev.hello_body();
        if let vigil_protocol::Body::Hello(h) = &mut h {
            h.manifests = versions
                .iter()
                .map(|(scope, version)| ManifestVersion {
                    class: Class::Firmware,
                    issuer: "Acme Imaging".try_into().unwrap(),
                    scope: (*scope).try_into().unwrap(),
                    version: *version,
                })
                .collect();
        }
        h
    };
    let boot = |dev: &mut Device, versions: &[(&str, u64)]| {
        dev.boot += 1;
        dev.seq = 0;
        let h = hello(dev, versions);
        let f = dev.frame(h);
        let mut l = Link::connect(&addr);
        l.send(&[f]);
        assert_eq!(l.ack(Duration::from_secs(10)).map(|a| a.seq), Some(0));
    };
    boot(&mut dev, &[("xray-fw", 3), ("ai-model", 7)]);
    // A new firmware version, the model still there: nothing.
    boot(&mut dev, &[("xray-fw", 4), ("ai-model", 7)]);
    assert!(c.alert("integrity.manifest-missing").is_none());
    // The model's manifest is gone.
    boot(&mut dev, &[("xray-fw", 4)]);
    let a = c
        .alert("integrity.manifest-missing")
        .expect("the missing manifest alerted");
    assert_eq!(a["severity"], "high");
    assert_eq!(a["device"], dev.id().as_str());
    assert_eq!(a["evidence"]["scope"], "ai-model", "{a:#}");
    assert_eq!(a["evidence"]["issuer"], "Acme Imaging");
    let gone: Vec<Value> = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "integrity.manifest-missing")
        .collect();
    assert_eq!(gone.len(), 1, "only the model's: {gone:#?}");
    // An older firmware manifest than before (the device's own rollback
    // record deleted, say): a rollback the collector sees for itself.
    assert!(c.alert("integrity.manifest-rollback").is_none());
    boot(&mut dev, &[("xray-fw", 2)]);
    let r = c
        .alert("integrity.manifest-rollback")
        .expect("the rollback alerted");
    assert_eq!(r["evidence"]["version"], 2, "{r:#}");
    assert_eq!(r["evidence"]["previous_version"], 4, "{r:#}");
    // Version 3 after 2 is still below the highest seen: alerted too.
    boot(&mut dev, &[("xray-fw", 3)]);
    let rollbacks = c
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "integrity.manifest-rollback")
        .count();
    assert_eq!(rollbacks, 2);
    assert_eq!(c.stop(), Some(0));
}

/// Two real collectors, each with its own archive, the device enrolled at
/// both: the first is stopped with SIGSTOP (a hung host: its kernel still
/// takes bytes), the agent leaves it for the failover, then comes back to
/// it after `--failback-s`. Each archive names what the other acknowledged
/// (a Gap `Elsewhere`), so neither raises a loss and both audit clean.
#[test]
fn an_agent_fails_over_to_a_second_collector_and_back_and_both_archives_audit_clean() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempdir("collector-failover");
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let key = keygen(&agent_dir);
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    let (sa, sb) = (dir.join("a"), dir.join("b"));
    enroll(&sa, &vigil_tests::key_text(&key), "mri-01");
    enroll(&sb, &vigil_tests::key_text(&key), "mri-01");
    let a = Collector::start(&sa, &["--listen", "127.0.0.1:0"]);
    let b = Collector::start(&sb, &["--listen", "127.0.0.1:0"]);
    let log = dir.join("agent.log");
    let mut cmd = Command::new(binary("vigil-agent"));
    cmd.arg("run").args([
        "--state-dir",
        agent_dir.to_str().unwrap(),
        "--collector",
        a.tls.as_deref().unwrap(),
        "--pin",
        a.pin.as_deref().unwrap(),
        "--failover",
        b.tls.as_deref().unwrap(),
        "--failover-pin",
        b.pin.as_deref().unwrap(),
        "--failback-s",
        "10",
        "--interval-ms",
        "200",
        "--batch",
        "1",
    ]);
    let agent = Agent::spawn_logged(cmd, &log);
    let samples = |c: &Collector| {
        let out = c.cli(&[
            "export",
            "--device",
            &id,
            "--format",
            "json",
            "--from",
            "2020-01-01",
        ]);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).map_or(0, |r| r.len())
    };
    let deadline = Duration::from_secs(90);
    assert!(
        a.wait_for(deadline, |c| samples(c) >= 5),
        "nothing at the first collector: {}",
        a.log()
    );
    kill(Pid::from_raw(a.pid() as i32), Signal::SIGSTOP).unwrap();
    let hung_at = Instant::now();
    let failed_over = b.wait_for(deadline, |c| samples(c) >= 5);
    let took = hung_at.elapsed();
    kill(Pid::from_raw(a.pid() as i32), Signal::SIGCONT).unwrap();
    assert!(
        failed_over,
        "nothing reached the failover collector: {}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        b.log()
    );
    // Back to the first: the agent says so, and the first stores samples
    // made after it did.
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let back = a.wait_for(deadline, |_| {
        agent_log().contains("trying the first collector again")
    });
    assert!(
        back,
        "the agent never tried the first collector again: {}",
        agent_log()
    );
    let at_back = samples(&a);
    assert!(
        a.wait_for(deadline, |c| samples(c) >= at_back + 10),
        "the first collector stored nothing after the failback: {}\n{}",
        agent_log(),
        a.log()
    );
    let (code, text) = agent.stop();
    assert_eq!(code, Some(0), "{text}");
    let text = agent_log();
    assert!(text.contains("0 frames left unacknowledged"), "{text}");
    assert!(text.contains("no acknowledgement for 15 s"), "{text}");
    assert!(
        b.log().contains("were acknowledged by another collector"),
        "{}",
        b.log()
    );
    for c in [&a, &b] {
        let transport = vigil_tests::collector::transport_alerts(&c.state);
        assert!(transport.is_empty(), "{transport:?}");
        let out = c.cli(&["audit"]);
        assert!(
            out.status.success(),
            "audit of {}: {}{}",
            c.state.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "first collector stopped (SIGSTOP): the failover stored samples {took:.1?} later \
         (15 s of ack silence, then one connect); {} samples at the first, {} at the failover",
        samples(&a),
        samples(&b)
    );
}
