//! The manifest text format: canonical round trips and a named error for
//! every malformation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::testdata;
use proptest::prelude::*;
use vigil_protocol::body::Class;
use vigil_protocol::manifest::{
    parse_time, write_time, Entry, EntryKind, Manifest, ManifestErrorKind as K,
};

fn example() -> Vec<u8> {
    std::fs::read(testdata("manifests/example.manifest")).unwrap()
}

#[test]
fn example_parses_and_writes_back_identically() {
    let text = example();
    let m = Manifest::parse(&text).unwrap();
    assert_eq!(m.issuer, "Acme Medical Imaging GmbH");
    assert_eq!(m.version, 42);
    assert_eq!(m.created, 1_795_946_400);
    assert_eq!(
        m.exclusive,
        vec![b"/etc/systemd/system".to_vec(), b"/usr/bin".to_vec()]
    );
    assert_eq!(m.entries.len(), 5);
    let model = &m.entries[4];
    assert_eq!(model.path, b"/usr/share/ct9000/model v3.onnx");
    assert_eq!(model.class, Class::Model);
    assert_eq!((model.mode, model.uid, model.gid), (0o640, 0, 998));
    assert!(matches!(
        model.kind,
        EntryKind::File {
            size: 52_428_800,
            ..
        }
    ));
    assert_eq!(
        m.entries[3].kind,
        EntryKind::Symlink {
            target: b"scanner".to_vec()
        }
    );
    assert_eq!(m.to_text().as_bytes(), &text[..]);
}

fn with_line(n: usize, replacement: &str) -> Vec<u8> {
    let text = String::from_utf8(example()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[n] = replacement;
    (lines.join("\n") + "\n").into_bytes()
}

#[test]
fn every_malformation_is_named_with_its_line() {
    let hash = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let cases: Vec<(Vec<u8>, usize, K)> = vec![
        (with_line(0, "vigil-manifest 2"), 1, K::Magic),
        (with_line(1, "scope x"), 2, K::Header),
        (with_line(1, "issuer  Acme"), 2, K::Value),
        (with_line(4, "version 042"), 5, K::Number),
        (with_line(4, "version -1"), 5, K::Number),
        (with_line(5, "created 2026-02-30T10:00:00Z"), 6, K::Time),
        (with_line(5, "created 2026-11-29 10:00:00"), 6, K::Time),
        (with_line(7, "exclusive /etc"), 8, K::Order),
        (with_line(7, "exclusive usr/bin"), 8, K::Path),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash} /usr/bin/../sbin/x"),
            ),
            11,
            K::Path,
        ),
        (
            with_line(10, &format!("file firmware 0755 0 0 10 {hash} /usr/bin/")),
            11,
            K::Path,
        ),
        (
            with_line(10, &format!("file firmware 0755 0 0 10 {hash} /usr/bin//x")),
            11,
            K::Path,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash} /usr/bin/\\x41"),
            ),
            11,
            K::Path,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash} /usr/bin/\\q"),
            ),
            11,
            K::Path,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash} /usr/bin/\\x5c"),
            ),
            11,
            K::Path,
        ),
        (
            with_line(
                10,
                &format!(
                    "file firmware 0755 0 0 10 {} /usr/bin/scanner",
                    hash.to_uppercase()
                ),
            ),
            11,
            K::Hash,
        ),
        (
            with_line(10, "file firmware 0755 0 0 10 abcd /usr/bin/scanner"),
            11,
            K::Hash,
        ),
        (
            with_line(
                10,
                &format!("file firmware 755 0 0 10 {hash} /usr/bin/scanner"),
            ),
            11,
            K::Mode,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0855 0 0 10 {hash} /usr/bin/scanner"),
            ),
            11,
            K::Mode,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 4294967296 10 {hash} /usr/bin/scanner"),
            ),
            11,
            K::Number,
        ),
        (
            with_line(
                10,
                &format!("file kernel 0755 0 0 10 {hash} /usr/bin/scanner"),
            ),
            11,
            K::UnknownClass,
        ),
        (
            with_line(
                10,
                &format!("fifo firmware 0755 0 0 10 {hash} /usr/bin/scanner"),
            ),
            11,
            K::Entry,
        ),
        (
            with_line(10, "file firmware 0755 0 0 /usr/bin/scanner"),
            11,
            K::Entry,
        ),
        (
            with_line(10, &format!("file firmware 0755 0 0 10 {hash} /aaa")),
            11,
            K::Order,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash} /usr/bin/scanner-legacy"),
            ),
            12,
            K::Order,
        ),
        (
            with_line(
                10,
                &format!("file firmware 0755 0 0 10 {hash}\t/usr/bin/scanner"),
            ),
            11,
            K::Text,
        ),
    ];
    for (text, line, kind) in cases {
        let err = Manifest::parse(&text).unwrap_err();
        assert_eq!(
            (err.line, err.kind),
            (line, kind),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert!(err.to_string().starts_with(&format!("line {line}: ")));
    }
    let mut no_newline = example();
    no_newline.pop();
    assert_eq!(Manifest::parse(&no_newline).unwrap_err().kind, K::Text);
    let mut crlf = example();
    crlf.splice(16..16, *b"\r");
    assert_eq!(Manifest::parse(&crlf).unwrap_err().kind, K::Text);
    let mut bad_utf8 = example();
    bad_utf8[20] = 0xff;
    assert_eq!(Manifest::parse(&bad_utf8).unwrap_err().kind, K::Text);
    assert_eq!(Manifest::parse(b"").unwrap_err().kind, K::Text);
}

#[test]
fn times_round_trip_over_the_calendar() {
    for t in [
        0i64,
        951_782_400,
        1_795_946_400,
        4_102_444_800,
        253_402_300_799,
    ] {
        let mut s = String::new();
        write_time(&mut s, t).unwrap();
        assert_eq!(parse_time(&s), Some(t), "{s}");
    }
    assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400));
    assert_eq!(parse_time("1900-02-29T00:00:00Z"), None);
    assert_eq!(parse_time("2026-11-29T24:00:00Z"), None);
}

proptest! {
    #[test]
    fn any_path_bytes_round_trip_through_the_text(
        comps in proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..12), 1..5),
        target in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        let comps: Vec<Vec<u8>> = comps.into_iter().map(|c| c.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect())
            .filter(|c: &Vec<u8>| c != b"." && c != b"..").collect();
        prop_assume!(!comps.is_empty());
        let mut path = Vec::new();
        for c in &comps { path.push(b'/'); path.extend_from_slice(c); }
        let m = Manifest {
            issuer: "Vendor".into(), scope: "s".into(), model: "m".into(), version: 1, created: 0,
            exclusive: vec![path.clone()],
            entries: vec![Entry { path: path.clone(), class: Class::Config, mode: 0o4755, uid: 1, gid: 2,
                kind: EntryKind::Symlink { target: target.clone() } }],
        };
        let text = m.to_text();
        prop_assert!(text.is_ascii());
        prop_assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), m);
    }
}
