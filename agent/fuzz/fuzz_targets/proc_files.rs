//! Every /proc parser of the agent, the netlink socket-table parser and the
//! posture checks' text matchers on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_agent::fuzzing::proc_files(data));
