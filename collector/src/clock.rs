//! The collector's own clock: wall time in Unix milliseconds, the time it
//! receives, stores and alerts at. Device times come in the frames and are
//! never read from here.

/// Now, in milliseconds since the Unix epoch (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
