//! The archive is tamper-evident (collector/README.md, "Tamper evidence"):
//! frames deleted from the middle or the tail, a device removed, a
//! history re-signed under another key. Each is done to a copy of a real
//! archive that two scripted devices filled through a running collector;
//! `audit` names what it can see in the file alone, and `audit --against`
//! the signed checkpoints the JSON sink received names the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vigil_protocol::{Frame, SignedFrame, SigningKey};
use vigil_tests::collector::{cli, enroll, Collector, Device, Link};
use vigil_tests::tempdir;

const FRAMES: u64 = 30;

/// Hello and `FRAMES` sample frames from `d`, all acked.
fn stream(c: &Collector, d: &mut Device) {
    let mut link = Link::connect(c.plain.as_ref().unwrap());
    let mut frames = vec![d.frame(d.hello_body())];
    for _ in 0..FRAMES {
        let b = d.sample_body(1);
        frames.push(d.frame(b));
    }
    link.send(&frames);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = link.ack(Duration::from_secs(2));
        if a.is_some_and(|a| a.seq == FRAMES) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ack for seq {FRAMES}: {a:?}\n{}",
            c.log()
        );
    }
}

fn audit(state: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["audit"];
    args.extend_from_slice(extra);
    let out = cli(state, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A copy of the stopped collector's state directory.
fn copy(from: &Path, name: &str) -> PathBuf {
    let to = tempdir(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    to
}

fn db(state: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(state.join("vigil.sqlite")).unwrap()
}

/// Deletes frames (and their decoded rows) of `device` matching `cond`.
fn delete_frames(state: &Path, device: &str, cond: &str) -> usize {
    let db = db(state);
    let sel = format!(
        "SELECT id FROM frames WHERE device = (SELECT num FROM devices WHERE id = '{device}') AND {cond}"
    );
    for t in ["samples", "sample_net", "sample_disk", "socket_changes"] {
        db.execute(&format!("DELETE FROM {t} WHERE frame IN ({sel})"), [])
            .unwrap();
    }
    db.execute(&format!("DELETE FROM frames WHERE id IN ({sel})"), [])
        .unwrap()
}

#[test]
fn deleted_frames_devices_and_re_signed_history_are_found() {
    let dir = tempdir("tamper");
    let state = dir.join("collector");
    let sink = dir.join("events.jsonl");
    let (mut a, mut b) = (Device::new(41), Device::new(42));
    enroll(&state, &a.key.verifying_key(), "scanner-a", "");
    enroll(&state, &b.key.verifying_key(), "scanner-b", "");
    let c = Collector::start_plain(&state, &["--sink-json", sink.to_str().unwrap()]);
    stream(&c, &mut a);
    stream(&c, &mut b);
    // Stopping seals the chain and signs a last checkpoint; the sink
    // delivers it before the collector exits.
    assert_eq!(c.stop(), Some(0));
    let sunk = std::fs::read_to_string(&sink).unwrap();
    let checkpoints: Vec<Value> = sunk
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["action"] == "checkpoint")
        .collect();
    assert!(
        !checkpoints.is_empty(),
        "no checkpoint reached the sink:\n{sunk}"
    );
    let last = &checkpoints.last().unwrap()["detail"]["statement"];
    assert_eq!(last["frames_sealed"], 2 * (FRAMES + 1), "{last}");
    let collector_key = last["collector_key"].as_str().unwrap().to_string();
    // What `checkpoints` prints is what the sink got.
    let out = cli(&state, &["checkpoints"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains(
            &checkpoints.last().unwrap()["detail"]["signature"]
                .as_str()
                .unwrap()[..32]
        ),
        "{listed}"
    );

    // The untouched archive: clean, against the sink's checkpoints too.
    let (code, text) = audit(&state, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(", 0 problems"), "{text}");
    let sink_arg = sink.to_str().unwrap();
    let (code, text) = audit(
        &state,
        &["--against", sink_arg, "--collector-key", &collector_key],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("checked against"), "{text}");

    // 1. Five frames deleted from the middle of a boot.
    let s1 = copy(&state, "tamper-middle");
    assert_eq!(delete_frames(&s1, &a.id(), "seq BETWEEN 10 AND 14"), 5);
    let (code, text) = audit(&s1, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "device {} boot 1: sequence 10..=14 (5 frames) missing",
            a.id()
        )),
        "{text}"
    );
    assert!(
        text.contains("are missing (neither stored nor retired)"),
        "{text}"
    );

    // 2. The tail deleted with the chain links and checkpoints that cover
    // it: the file alone is consistent again, the SOC's copy is not.
    let s2 = copy(&state, "tamper-tail");
    let first_gone: i64 = db(&s2)
        .query_row(
            "SELECT min(id) FROM frames WHERE device = (SELECT num FROM devices WHERE id = ?1) AND seq >= 25",
            [a.id()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delete_frames(&s2, &a.id(), "seq >= 25"), 6);
    let conn = db(&s2);
    conn.execute("DELETE FROM chain WHERE last_frame >= ?1", [first_gone])
        .unwrap();
    conn.execute("DELETE FROM checkpoints", []).unwrap();
    drop(conn);
    let (code, text) = audit(&s2, &[]);
    assert_eq!(code, Some(0), "the file alone cannot tell: {text}");
    let (code, text) = audit(&s2, &["--against", sink_arg]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("the archive's chain has no such link")
            || text.contains("the archive's link has another head"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "device {} had {} frames at the checkpoint",
            a.id(),
            FRAMES + 1
        )),
        "{text}"
    );

    // 3. A whole device removed.
    let s3 = copy(&state, "tamper-device");
    assert_eq!(delete_frames(&s3, &b.id(), "1"), (FRAMES + 1) as usize);
    db(&s3)
        .execute("DELETE FROM devices WHERE id = ?1", [b.id()])
        .unwrap();
    let (code, text) = audit(&s3, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("are missing (neither stored nor retired)"),
        "{text}"
    );
    let (code, text) = audit(&s3, &["--against", sink_arg]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "device {} is in the checkpoint and not in the archive",
            b.id()
        )),
        "{text}"
    );

    // 4. Device a's whole history re-signed under a new key (so under a
    // new device id: the protocol derives the id from the key), the device
    // row rewritten to match, and the chain rebuilt from scratch (a
    // collector started on the copy seals everything afresh). The file
    // alone is a perfect forgery; the checkpoints are not fooled.
    let s4 = copy(&state, "tamper-resign");
    let forged = SigningKey::from_bytes(&[99; 32]);
    let forged_id = vigil_protocol::DeviceId::of(&forged.verifying_key());
    let conn = db(&s4);
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare(
            "SELECT id, bytes FROM frames WHERE device = (SELECT num FROM devices WHERE id = ?1)",
        )
        .unwrap()
        .query_map([a.id()], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len() as u64, FRAMES + 1);
    for (id, bytes) in rows {
        let v = SignedFrame::parse(&bytes)
            .unwrap()
            .verify(&a.key.verifying_key())
            .unwrap();
        let mut h = *v.header();
        h.device = forged_id;
        let mut body = v.body().unwrap();
        if let vigil_protocol::Body::Hello(hello) = &mut body {
            hello.public_key = forged.verifying_key().to_bytes();
        }
        let again = Frame::new(h, body).sign(&forged).unwrap().to_vec();
        conn.execute(
            "UPDATE frames SET bytes = ?2 WHERE id = ?1",
            rusqlite::params![id, again],
        )
        .unwrap();
    }
    let mut forged_text = String::new();
    vigil_protocol::frame::write_public_key(&mut forged_text, &forged.verifying_key()).unwrap();
    conn.execute(
        "UPDATE devices SET id = ?2, public_key = ?3 WHERE id = ?1",
        rusqlite::params![a.id(), forged_id.to_string(), forged_text],
    )
    .unwrap();
    conn.execute(
        "UPDATE tracks SET device = ?2 WHERE device = ?1",
        rusqlite::params![a.id(), forged_id.to_string()],
    )
    .unwrap();
    conn.execute_batch("DELETE FROM chain; DELETE FROM checkpoints;")
        .unwrap();
    drop(conn);
    let c4 = Collector::start_plain(&s4, &[]);
    let log4 = c4.log();
    assert_eq!(c4.stop(), Some(0), "{log4}");
    let (code, text) = audit(&s4, &[]);
    assert_eq!(
        code,
        Some(0),
        "a consistent rewrite passes the file's own audit: {text}"
    );
    let (code, text) = audit(&s4, &["--against", sink_arg]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "device {} is in the checkpoint and not in the archive",
            a.id()
        )),
        "{text}"
    );
    // The rebuilt chain contradicts the checkpoint whether it has as many
    // links (another head) or fewer (the writer sealed more often while
    // the devices streamed on a slow machine).
    assert!(
        text.contains("another head") || text.contains("the archive's chain has no such link"),
        "{text}"
    );
    // The same key swapped in without re-signing: named by the file alone.
    let s5 = copy(&state, "tamper-key");
    db(&s5)
        .execute(
            "UPDATE devices SET public_key = ?2 WHERE id = ?1",
            rusqlite::params![a.id(), forged_text],
        )
        .unwrap();
    let (code, text) = audit(&s5, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "device {}: the key on record is not the key its id was made from",
            a.id()
        )),
        "{text}"
    );
    let (_, text) = audit(&s5, &["--against", sink_arg]);
    assert!(
        text.contains(&format!(
            "device {} has another key than at the checkpoint",
            a.id()
        )),
        "{text}"
    );

    // A checkpoint file that is not one, and a checkpoint whose signature
    // was edited, are errors, not a pass.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "{\"hello\": 1}\nnot json\n").unwrap();
    let (code, text) = audit(&state, &["--against", junk.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no checkpoint in the file"), "{text}");
    let edited = dir.join("edited.jsonl");
    std::fs::write(
        &edited,
        listed.replacen("\"frames_sealed\":62", "\"frames_sealed\":61", 1),
    )
    .unwrap();
    let (code, text) = audit(&state, &["--against", edited.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("signature does not verify"), "{text}");
}
