//! The collector's configuration file, parsed and validated.
#![no_main]
#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config::fuzz(data));
