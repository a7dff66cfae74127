//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the same entry
//! points the cargo-fuzz targets call, so every input a fuzzer ever kept
//! stays a regression test on stable Rust.

#[test]
fn frame_decoder_corpus() {
    vigil_protocol::fuzzing::replay_corpus(
        env!("CARGO_MANIFEST_DIR"),
        "frame_decoder",
        vigil_protocol::fuzzing::frame_decoder,
    );
}

#[test]
fn manifest_parser_corpus() {
    vigil_protocol::fuzzing::replay_corpus(
        env!("CARGO_MANIFEST_DIR"),
        "manifest_parser",
        vigil_protocol::fuzzing::manifest,
    );
}
