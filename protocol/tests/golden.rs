//! Golden wire bytes: one signed frame of every body kind and one ack, in
//! `testdata/golden/`. A difference here is a wire-format break and needs a
//! protocol version bump (SPEC.md, "Evolution"). To rewrite the files after
//! an intended break: `VIGIL_BLESS=1 cargo test -p vigil-protocol --test golden`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use vigil_protocol::{
    to_wire, Ack, DecodeError, DeviceId, Downlink, SignedFrame, Standing, Status,
};

fn check(name: &str, bytes: &[u8]) {
    let path = testdata("golden").join(name);
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        want == bytes,
        "{name}: encoding differs from the golden file: wire-format break"
    );
}

#[test]
fn every_body_matches_its_golden_frame() {
    let k = key(7);
    for (seq, (name, body)) in every_body().into_iter().enumerate() {
        let frame = signed(&k, seq as u64, body.clone());
        check(&format!("{name}.frame"), &frame);
        // And the golden bytes decode to the same value.
        let golden = std::fs::read(testdata("golden").join(format!("{name}.frame"))).unwrap();
        let v = SignedFrame::parse(&golden)
            .unwrap()
            .verify(&k.verifying_key())
            .unwrap();
        assert_eq!(v.body().unwrap(), body, "{name}");
    }
}

#[test]
fn wire_form_and_ack_match_golden() {
    let k = key(7);
    let (_, samples) = every_body().into_iter().nth(1).unwrap();
    check("samples.wire", &to_wire(&signed(&k, 1, samples)).unwrap());
    let ack = Ack {
        device: DeviceId::of(&k.verifying_key()),
        boot: 3,
        seq: 1_000_000,
    };
    check("ack.bin", &ack.encode());
    assert_eq!(
        Ack::decode(&std::fs::read(testdata("golden/ack.bin")).unwrap()),
        Ok(ack)
    );
    // The status a refused device gets before the close, and no status
    // ever reads as an ack.
    for (name, standing) in [
        ("status-pending.bin", Standing::Pending),
        ("status-revoked.bin", Standing::Revoked),
    ] {
        let st = Downlink::Status(Status {
            device: DeviceId::of(&k.verifying_key()),
            standing,
        });
        check(name, &st.encode());
        let bytes = std::fs::read(testdata("golden").join(name)).unwrap();
        assert_eq!(Downlink::decode(&bytes), Ok(st));
        assert_eq!(Ack::decode(&bytes), Err(DecodeError::Malformed));
    }
    assert_eq!(
        Downlink::decode(&std::fs::read(testdata("golden/ack.bin")).unwrap()),
        Ok(Downlink::Ack(ack))
    );
}

#[test]
fn device_id_is_the_key_fingerprint() {
    let id = DeviceId::of(&key(7).verifying_key());
    assert_eq!(DeviceId::from_hex(&id.to_string()), Some(id));
    let mut text = String::new();
    vigil_protocol::frame::write_public_key(&mut text, &key(7).verifying_key()).unwrap();
    assert!(text.starts_with("ed25519:") && text.len() == 52, "{text}");
    assert_eq!(
        vigil_protocol::frame::parse_public_key(&text),
        Some(key(7).verifying_key())
    );
    assert_eq!(vigil_protocol::frame::parse_public_key(&text[..50]), None);
    assert_eq!(
        vigil_protocol::frame::parse_public_key(&text.replace("ed25519:", "rsa:")),
        None
    );
    let pinned = std::fs::read_to_string(testdata("golden/device-id.txt")).unwrap_or_default();
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::create_dir_all(testdata("golden")).unwrap();
        std::fs::write(testdata("golden/device-id.txt"), format!("{id}\n")).unwrap();
    } else {
        assert_eq!(pinned.trim(), id.to_string());
    }
}
