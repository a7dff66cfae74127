//! `vigil-agent` as a library: the binary's modules, exposed so their pure
//! parts (parsers, queue, config) are tested directly. Synchronous, no async
//! runtime; never depends on the collector.

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod identity;
pub mod inventory;
pub mod link;
pub mod logger;
pub mod manifest;
pub mod posture;
pub mod privilege;
pub mod queue;
pub mod report;
pub mod sample;
pub mod sessions;
pub mod stream;
