//! The streaming COBS decoder on hostile input: never panics, resynchronises
//! at the next delimiter and counts what it drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use proptest::prelude::*;
use vigil_protocol::cobs::{decode_into, encode_into, FrameDecoder, FrameError};
use vigil_protocol::{to_wire, Body, SignedFrame, MAX_FRAME_LEN};

fn drain(
    dec: &mut FrameDecoder<MAX_FRAME_LEN>,
    mut input: &[u8],
) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    while let Some(r) = dec.feed(&mut input) {
        out.push(r.map(<[u8]>::to_vec));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn cobs_round_trips(data in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..700)) {
        let mut enc = heapless::Vec::<u8, 1024>::new();
        encode_into(&data, &mut enc).unwrap();
        prop_assert_eq!(enc.iter().filter(|&&b| b == 0).count(), 1);
        prop_assert_eq!(*enc.last().unwrap(), 0);
        let mut back = heapless::Vec::<u8, 1024>::new();
        decode_into(&enc[..enc.len() - 1], &mut back).unwrap();
        prop_assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn garbage_never_panics_and_the_next_good_frame_decodes(
        garbage in proptest::collection::vec(any::<u8>(), 0..6000),
        split in 1usize..97,
    ) {
        let k = key(7);
        let frame = signed(&k, 9, Body::Heartbeat(heartbeat()));
        let mut stream = garbage.clone();
        stream.push(0);
        stream.extend_from_slice(&to_wire(&frame).unwrap());
        let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
        let mut results = Vec::new();
        for chunk in stream.chunks(split) {
            results.extend(drain(&mut dec, chunk));
        }
        let last = results.last().unwrap().clone().unwrap();
        prop_assert_eq!(&last, &frame);
        prop_assert!(SignedFrame::parse(&last).unwrap().verify(&k.verifying_key()).is_ok());
        let s = dec.stats();
        prop_assert_eq!(s.frames + s.corrupt + s.oversize, results.len() as u64);
        let dropped: u64 = results.iter().filter(|r| r.is_err()).count() as u64;
        prop_assert_eq!(s.corrupt + s.oversize, dropped);
        prop_assert!(s.bytes_dropped <= garbage.len() as u64);
    }
}

#[test]
fn corrupted_byte_costs_one_frame() {
    let k = key(7);
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| signed(&k, i, Body::Heartbeat(heartbeat())))
        .collect();
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend_from_slice(&to_wire(f).unwrap());
    }
    // Corrupt the middle frame's body: COBS may still decode it, the signature does not.
    let first_len = to_wire(&frames[0]).unwrap().len();
    stream[first_len + 20] ^= 0x40;
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let out = drain(&mut dec, &stream);
    assert_eq!(out.len(), 3);
    let ok: Vec<bool> = out
        .iter()
        .map(|r| {
            r.as_ref()
                .ok()
                .and_then(|b| SignedFrame::parse(b).ok()?.verify(&k.verifying_key()).ok())
                .is_some()
        })
        .collect();
    assert_eq!(ok, [true, false, true]);
}

#[test]
fn a_zero_inside_a_frame_splits_it_and_both_halves_are_dropped_or_rejected() {
    let k = key(7);
    let frame = signed(&k, 0, Body::Heartbeat(heartbeat()));
    let mut wire = to_wire(&frame).unwrap().to_vec();
    wire.insert(30, 0);
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let out = drain(&mut dec, &wire);
    assert_eq!(out.len(), 2);
    for b in out.into_iter().flatten() {
        let verified = SignedFrame::parse(&b)
            .ok()
            .and_then(|f| f.verify(&k.verifying_key()).ok());
        assert!(verified.is_none(), "half a frame verified");
    }
}

#[test]
fn lone_delimiters_are_ignored() {
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    assert!(drain(&mut dec, &[0, 0, 0, 0]).is_empty());
    assert_eq!(dec.stats().bytes_dropped, 0);
}
