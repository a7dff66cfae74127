//! The agent's configuration file, parsed and validated.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_agent::fuzzing::config(data));
