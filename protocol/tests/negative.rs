//! Negative vectors: everything that must be rejected is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use vigil_protocol::cobs::{FrameDecoder, FrameError};
use vigil_protocol::frame::crc32;
use vigil_protocol::replay::{advance, stand, ConnectionOrder, Position, Standing};
use vigil_protocol::{
    to_wire, Ack, Body, DecodeError, DeviceId, Header, SignedFrame, VerifyError, VerifyingKey,
    DOWNLINK_VERSION, MAX_FRAME_LEN, VERSION,
};

fn verify(bytes: &[u8], key: &VerifyingKey) -> bool {
    SignedFrame::parse(bytes)
        .ok()
        .and_then(|f| f.verify(key).ok())
        .is_some()
}

#[test]
fn every_single_bit_flip_of_every_golden_frame_is_rejected() {
    let k = key(7);
    let vk = k.verifying_key();
    let mut flips = 0;
    for (seq, (name, body)) in every_body().into_iter().enumerate() {
        let frame = signed(&k, seq as u64, body);
        assert!(verify(&frame, &vk), "{name}: untouched frame must verify");
        for bit in 0..frame.len() * 8 {
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&f, &vk), "{name}: flip of bit {bit} accepted");
            flips += 1;
        }
    }
    assert!(flips > 10_000, "only {flips} flips tried");
}

#[test]
fn wrong_key_is_rejected() {
    let frame = signed(&key(7), 0, Body::Heartbeat(heartbeat()));
    assert!(!verify(&frame, &key(8).verifying_key()));
    // Even when the header claims the other device.
    let other = key(8);
    let mut forged = vigil_protocol::Frame::new(
        header(&other, 3, 0, FRAME_TIME),
        Body::Heartbeat(heartbeat()),
    )
    .sign(&key(7))
    .unwrap();
    assert!(!verify(&forged, &other.verifying_key()));
    forged.truncate(0);
}

#[test]
fn every_truncation_is_rejected() {
    let k = key(7);
    for (seq, (name, body)) in every_body().into_iter().enumerate() {
        let frame = signed(&k, seq as u64, body);
        for len in 0..frame.len() {
            assert!(
                !verify(&frame[..len], &k.verifying_key()),
                "{name}: prefix of {len} bytes accepted"
            );
        }
    }
    assert_eq!(SignedFrame::parse(&[]).err(), Some(DecodeError::Truncated));
    assert_eq!(
        SignedFrame::parse(&[VERSION]).err(),
        Some(DecodeError::Truncated)
    );
}

#[test]
fn oversize_frames_are_rejected_by_parser_and_decoder() {
    let big = vec![VERSION; MAX_FRAME_LEN + 1];
    assert_eq!(SignedFrame::parse(&big).err(), Some(DecodeError::Oversize));
    let mut wire = vec![0xffu8; MAX_FRAME_LEN * 2];
    wire.push(0);
    let good = to_wire(&signed(&key(7), 0, Body::Heartbeat(heartbeat()))).unwrap();
    wire.extend_from_slice(&good);
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let mut input: &[u8] = &wire;
    assert_eq!(
        dec.feed(&mut input).map(|r| r.err()),
        Some(Some(FrameError::Oversize))
    );
    assert!(
        dec.feed(&mut input).unwrap().is_ok(),
        "frame after the oversize one is decoded"
    );
    assert_eq!(dec.stats().oversize, 1);
    assert_eq!(dec.stats().bytes_dropped, (MAX_FRAME_LEN * 2) as u64);
}

#[test]
fn a_frame_without_a_delimiter_is_known_oversize_before_it_ends() {
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    // Up to the maximum, nothing is known yet.
    let mut input: &[u8] = &[0xffu8; MAX_FRAME_LEN];
    assert!(dec.feed(&mut input).is_none());
    assert!(!dec.in_oversize_frame());
    // Past it, with no delimiter in sight, it is.
    let mut more: &[u8] = &[0xffu8; 64];
    assert!(dec.feed(&mut more).is_none());
    assert!(dec.in_oversize_frame());
    // The delimiter ends it as an oversize frame and the next one decodes.
    let good = to_wire(&signed(&key(7), 0, Body::Heartbeat(heartbeat()))).unwrap();
    let mut rest = vec![0u8];
    rest.extend_from_slice(&good);
    let mut rest: &[u8] = &rest;
    assert_eq!(
        dec.feed(&mut rest).map(|r| r.err()),
        Some(Some(FrameError::Oversize))
    );
    assert!(!dec.in_oversize_frame());
    assert!(dec.feed(&mut rest).unwrap().is_ok());
}

#[test]
fn version_other_than_ours_is_rejected() {
    let mut frame = signed(&key(7), 0, Body::Heartbeat(heartbeat()));
    frame[0] = VERSION + 1;
    assert_eq!(SignedFrame::parse(&frame).err(), Some(DecodeError::Version));
}

/// The group order L of Curve25519's prime-order subgroup, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

#[test]
fn non_canonical_signature_is_rejected() {
    let k = key(7);
    let mut frame = signed(&k, 0, Body::Heartbeat(heartbeat()));
    let n = frame.len();
    // S + L is the same scalar mod L: accepted by lax verifiers, not by verify_strict.
    let s = &mut frame[n - 32..];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let v = u16::from(*b) + u16::from(l) + carry;
        *b = v as u8;
        carry = v >> 8;
    }
    assert!(!verify(&frame, &k.verifying_key()));
}

#[test]
fn small_order_key_with_trivial_signature_is_rejected() {
    // The identity point as a public key with R = identity, S = 0 satisfies
    // the plain verification equation for every message.
    let mut id = [0u8; 32];
    id[0] = 1;
    let weak = VerifyingKey::from_bytes(&id).unwrap();
    let h = Header {
        version: VERSION,
        device: DeviceId::of(&weak),
        boot: 0,
        seq: 0,
        time_ms: 0,
    };
    let mut bytes = postcard::to_allocvec(&h).unwrap();
    bytes.extend(postcard::to_allocvec(&Body::Heartbeat(heartbeat())).unwrap());
    let mut sig = [0u8; 64];
    sig[0] = 1;
    bytes.extend_from_slice(&sig);
    let parsed = SignedFrame::parse(&bytes).unwrap();
    assert_eq!(parsed.verify(&weak).err(), Some(VerifyError::Invalid));
}

#[test]
fn replayed_and_backwards_sequences_are_classified() {
    let k = key(7);
    let h = |boot, seq| header(&k, boot, seq, FRAME_TIME);
    let mut top = None;
    for seq in 0..5 {
        assert!(stand(top, &h(3, seq)).acceptable());
        top = Some(advance(top, &h(3, seq)));
    }
    assert_eq!(top, Some(Position { boot: 3, seq: 4 }));
    // A resend or replay of the current boot: the archive must decide.
    assert_eq!(stand(top, &h(3, 2)), Standing::Behind);
    // A skipped range is reported.
    assert_eq!(stand(top, &h(3, 9)), Standing::Ahead { skipped: 4 });
    // An earlier boot is a replay.
    assert_eq!(stand(top, &h(2, 100)), Standing::StaleBoot);
    assert!(!Standing::StaleBoot.acceptable());
    // A restart opens a new space.
    assert_eq!(
        stand(top, &h(4, 0)),
        Standing::NewBoot {
            previous: 3,
            skipped: 0
        }
    );
    // Advance never moves backwards.
    assert_eq!(advance(top, &h(3, 1)), Position { boot: 3, seq: 4 });
    // On one connection: a resend within the boot is admitted (go-back-N),
    // an older boot after a newer one is not.
    let mut order = ConnectionOrder::default();
    assert!(order.admit(&h(3, 5)));
    assert!(order.admit(&h(3, 6)));
    assert!(order.admit(&h(3, 2)), "a resend within the boot");
    assert!(order.admit(&h(3, 7)));
    assert!(order.admit(&h(4, 0)));
    assert!(
        !order.admit(&h(3, 8)),
        "an older boot spliced in after a newer one"
    );
    assert!(order.admit(&h(4, 1)));
}

/// `message` with a fresh CRC: to show what the layers under the CRC reject.
fn sealed(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    out.extend_from_slice(&crc32(message).to_le_bytes());
    out
}

#[test]
fn malformed_acks_are_rejected() {
    let ack = Ack {
        device: DeviceId([1; 8]),
        boot: 1,
        seq: 2,
    }
    .encode();
    let message = &ack[..ack.len() - 4];
    assert_eq!(
        Ack::decode(&ack[..ack.len() - 1]).err(),
        Some(DecodeError::Checksum)
    );
    assert_eq!(
        Ack::decode(&sealed(&message[..message.len() - 1])).err(),
        Some(DecodeError::Malformed)
    );
    let mut long = message.to_vec();
    long.push(0);
    assert_eq!(
        Ack::decode(&sealed(&long)).err(),
        Some(DecodeError::Malformed)
    );
    let mut old = message.to_vec();
    old[0] = 1; // version 1 acks had no CRC: refused, not misread
    assert_eq!(Ack::decode(&sealed(&old)).err(), Some(DecodeError::Version));
    let mut cmd = message.to_vec();
    cmd[1] = 1; // any downlink variant but Ack: the collector cannot command
    assert_eq!(
        Ack::decode(&sealed(&cmd)).err(),
        Some(DecodeError::Malformed)
    );
    assert_eq!(Ack::decode(&[]).err(), Some(DecodeError::Truncated));
    assert_eq!(
        Ack::decode(&[DOWNLINK_VERSION, 0, 0, 0]).err(),
        Some(DecodeError::Truncated)
    );
}

/// What a noisy serial line does to an ack: one bit flipped anywhere, one
/// byte dropped, one inserted or replaced. None of it reads as an ack (the
/// agent would forget frames the collector never stored).
#[test]
fn a_damaged_ack_is_never_read_as_an_ack() {
    let ack = Ack {
        device: DeviceId([0x5a; 8]),
        boot: 300,
        seq: 70_000,
    }
    .encode();
    assert_eq!(
        Ack::decode(&ack),
        Ok(Ack {
            device: DeviceId([0x5a; 8]),
            boot: 300,
            seq: 70_000
        })
    );
    let mut damaged = Vec::new();
    for i in 0..ack.len() {
        for bit in 0..8 {
            let mut a = ack.to_vec();
            a[i] ^= 1 << bit;
            damaged.push(a);
        }
        let mut dropped = ack.to_vec();
        dropped.remove(i);
        damaged.push(dropped);
        for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut inserted = ack.to_vec();
            inserted.insert(i, b);
            damaged.push(inserted);
            let mut replaced = ack.to_vec();
            if replaced[i] != b {
                replaced[i] = b;
                damaged.push(replaced);
            }
        }
    }
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the CRC-32 check value");
    assert!(damaged.len() > 300, "{}", damaged.len());
    for d in &damaged {
        assert!(Ack::decode(d).is_err(), "{d:02x?} read as an ack");
    }
}

#[test]
fn unknown_body_verifies_but_does_not_decode() {
    let k = key(7);
    let h = header(&k, 3, 0, FRAME_TIME);
    let mut bytes = postcard::to_allocvec(&h).unwrap();
    bytes.extend_from_slice(&[42, 1, 2, 3]); // body tag 42: a future variant
    let mut msg = vigil_protocol::frame::SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(&bytes);
    use ed25519_dalek::Signer;
    bytes.extend_from_slice(&k.sign(&msg).to_bytes());
    let v = SignedFrame::parse(&bytes)
        .unwrap()
        .verify(&k.verifying_key())
        .unwrap();
    assert_eq!(v.kind(), None);
    assert_eq!(v.body().err(), Some(DecodeError::UnknownBody));
    assert_eq!(v.as_bytes(), &bytes[..]);
}

fn verify_hello(bytes: &[u8]) -> Option<VerifyingKey> {
    let (_, key, _) = SignedFrame::parse(bytes).ok()?.verify_hello().ok()?;
    Some(key)
}

#[test]
fn self_signed_hello_proves_its_key_and_nothing_else_does() {
    let k = key(7);
    let good = signed(&k, 0, Body::Hello(hello()));
    assert_eq!(verify_hello(&good), Some(k.verifying_key()));

    // Someone else's Hello re-signed with another key: the carried key's
    // fingerprint is not the header's device.
    let other = key(9);
    let resigned = signed(&other, 0, Body::Hello(hello()));
    assert_eq!(verify_hello(&resigned), None);

    // A Hello carrying the signer's key but claiming another device id.
    let mut h = hello();
    h.public_key = other.verifying_key().to_bytes();
    let claims = signed(&k, 0, Body::Hello(h.clone()));
    assert_eq!(verify_hello(&claims), None);
    // The same with a consistent header verifies as the other device.
    let consistent = signed(&other, 0, Body::Hello(h));
    assert_eq!(verify_hello(&consistent), Some(other.verifying_key()));

    // Not a Hello.
    assert_eq!(
        verify_hello(&signed(&k, 1, Body::Heartbeat(heartbeat()))),
        None
    );

    // Every bit flip of a self-signed Hello fails.
    for bit in 0..good.len() * 8 {
        let mut f = good.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(verify_hello(&f), None, "bit {bit}");
    }
}
