//! The collector's own clock: wall time in Unix milliseconds, the time it
//! receives, stores, rolls up and alerts at. Device times come in the
//! frames and are never read from here.
//!
//! Soak tests fast-forward it (`serve --test-clock START_MS:FACTOR`, hidden
//! from the help), as they do the agent's: retention and roll-up go by this
//! clock, so a month of a fast-forwarded device only ages the archive if
//! the collector's clock runs as fast.

use std::sync::OnceLock;
use std::time::Instant;

static TEST: OnceLock<(u64, u64, Instant)> = OnceLock::new();

/// Now, in milliseconds since the Unix epoch (0 before 1970).
pub fn now_ms() -> u64 {
    if let Some(&(start, factor, at)) = TEST.get() {
        let real = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        return start.saturating_add(real.saturating_mul(factor));
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `START_MS:FACTOR`: the clock reads `START_MS` now and runs `FACTOR`
/// (1..=100000) times faster from here. Set once per process.
pub fn set_test_clock(spec: &str) -> anyhow::Result<()> {
    let parsed = spec.split_once(':').and_then(|(s, f)| {
        let (s, f) = (s.parse::<u64>().ok()?, f.parse::<u64>().ok()?);
        (1..=100_000).contains(&f).then_some((s, f))
    });
    let Some((start, factor)) = parsed else {
        anyhow::bail!("--test-clock: START_MS:FACTOR with a factor 1..100000, not {spec}");
    };
    TEST.set((start, factor, Instant::now()))
        .map_err(|_| anyhow::anyhow!("--test-clock: the clock is already set"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_test_clock_is_refused() {
        for bad in ["", "5", "x:2", "5:0", "5:100001", "-1:2"] {
            assert!(super::set_test_clock(bad).is_err(), "{bad}");
        }
    }
}
