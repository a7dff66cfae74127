//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the
//! ordinary test that replays the committed corpus. Each checks invariants
//! and panics only when one is broken. Not part of the supported API.

use crate::cobs::{self, FrameDecoder, FrameError};
use crate::frame::{Ack, SignedFrame, MAX_FRAME_LEN};
use crate::Body;

/// Streams `data` through the frame decoder in chunks whose sizes come from
/// the data, then parses every frame as a frame, a body and an ack.
pub fn frame_decoder(data: &[u8]) {
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let (chunk, mut input) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c % 64) + 1, rest),
        None => return,
    };
    let mut yielded = 0u64;
    while !input.is_empty() {
        let take = chunk.min(input.len());
        let (mut piece, rest) = input.split_at(take);
        input = rest;
        while let Some(r) = dec.feed(&mut piece) {
            yielded += 1;
            match r {
                Ok(frame) => {
                    assert!(!frame.is_empty() && frame.len() <= MAX_FRAME_LEN);
                    let mut again =
                        heapless::Vec::<u8, { cobs::encoded_max(MAX_FRAME_LEN) }>::new();
                    assert!(cobs::encode_into(frame, &mut again).is_some());
                    let mut back = heapless::Vec::<u8, MAX_FRAME_LEN>::new();
                    let inner = again.get(..again.len() - 1).unwrap_or(&[]);
                    assert_eq!(cobs::decode_into(inner, &mut back), Ok(()));
                    assert_eq!(&back[..], frame);
                    frame_bytes(frame);
                }
                Err(FrameError::Corrupt | FrameError::Oversize) => {}
            }
        }
    }
    let s = dec.stats();
    assert_eq!(s.frames + s.corrupt + s.oversize, yielded);
}

/// Parses `data` as a frame and its body; a body that decodes must encode
/// to bytes that decode to the same value. (Not necessarily the same bytes:
/// postcard accepts overlong varints, which our encoders never write.)
pub fn frame_bytes(data: &[u8]) {
    if let Ok(f) = SignedFrame::parse(data) {
        let _ = f.header();
    }
    let _ = Ack::decode(data);
    for start in 0..data.len().min(24) {
        let Some(tail) = data.get(start..) else { break };
        if let Ok((body, [])) = postcard::take_from_bytes::<Body>(tail) {
            let mut buf = [0u8; MAX_FRAME_LEN];
            let again =
                postcard::to_slice(&body, &mut buf).map(|b| postcard::from_bytes::<Body>(b));
            assert!(
                matches!(again, Ok(Ok(ref b)) if *b == body),
                "body does not survive re-encoding"
            );
        }
    }
}

/// Parses `data` as a manifest (canonical: it must write back identically)
/// and as minisign key and signature files.
#[cfg(feature = "alloc")]
pub fn manifest(data: &[u8]) {
    if let Ok(m) = crate::manifest::Manifest::parse(data) {
        assert_eq!(
            m.to_text().as_bytes(),
            data,
            "manifest text is not canonical"
        );
    }
    if let Ok(text) = core::str::from_utf8(data) {
        let _ = crate::minisign::PublicKey::parse(text);
        let _ = crate::minisign::SignatureFile::parse(text);
    }
}

/// Replays every file in `CRATE/fuzz/corpus/TARGET` through `run`, for
/// the ordinary tests of each crate with fuzz targets; a panic names the
/// input, and a corpus of fewer than five inputs fails.
#[cfg(feature = "std")]
pub fn replay_corpus(crate_dir: &str, target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(crate_dir)
        .join("fuzz/corpus")
        .join(target);
    let dir = dir.as_path();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut n = 0;
    for entry in entries {
        let path = match entry {
            Ok(e) => e.path(),
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(
            r.is_ok(),
            "corpus input {} breaks an invariant",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} corpus inputs");
}
