//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the same entry
//! points the cargo-fuzz targets call, so every input a fuzzer ever kept
//! stays a regression test on stable Rust.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
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

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", vigil_protocol::fuzzing::frame_decoder);
}

#[test]
fn manifest_parser_corpus() {
    replay("manifest_parser", vigil_protocol::fuzzing::manifest);
}
