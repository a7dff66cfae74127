//! Arbitrary bytes as a manifest (must be canonical when accepted) and as
//! minisign key and signature files (see `vigil_protocol::fuzzing::manifest`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_protocol::fuzzing::manifest(data));
