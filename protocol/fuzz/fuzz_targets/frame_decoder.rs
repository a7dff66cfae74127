//! Streams arbitrary bytes through the COBS frame decoder and the frame,
//! body and ack parsers (see `vigil_protocol::fuzzing::frame_decoder`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_protocol::fuzzing::frame_decoder(data));
