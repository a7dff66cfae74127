//! Detection: what a device's behaviour is measured against. `metric`
//! derives the watched series from a sample, `score` is one metric's
//! detector (learn a profile, score against it, frozen after approval),
//! `baseline` is a device's whole baseline and the rule-based detectors,
//! `replay` runs a recorded series through the same code offline. Pure:
//! bodies and samples in, verdicts and `Raise`s out; it never writes to the
//! archive or sends an alert (the writer does both).
//!
//! Depends on `alert` (the rules it raises), `config` (the policy) and
//! `store` (only its row types); nothing here depends on ingest or the CLI.

pub mod baseline;
pub mod metric;
pub mod recent;
pub mod replay;
pub mod score;
