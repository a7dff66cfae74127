//! A device's clock against the collector's, from the frames alone.
//!
//! A frame's lag (receive time minus the time the device wrote in it) is
//! the device clock's error plus the time the frame waited: in the agent's
//! queue through an outage, on the link. A clock *ahead* shows on any one
//! frame (no queue makes a frame arrive before it was written). A clock
//! *behind* looks like a backlog, so it is judged only on *live* frames:
//! one that arrived at least a second after the device's previous frame,
//! with the device's clock having moved by about as much (within half) as
//! the collector's. A backlog drains far faster than it was written, so
//! none of its frames is live; a device whose clock is simply wrong runs
//! at the right rate, and every frame of its steady stream is live. Three
//! live frames in a row lagging past the bound make the verdict "behind";
//! three within it clear any verdict.

/// Live frames in a row that make or clear a verdict.
const RUN: u32 = 3;
/// A live frame arrives at least this long after the previous one.
const MIN_STEP_MS: u64 = 1000;

/// What one device's frames say about its clock.
#[derive(Debug, Default)]
pub struct ClockWatch {
    /// The previous frame: (device time, receive time).
    last: Option<(u64, u64)>,
    /// Live frames in a row past the bound, and the smallest lag of them.
    behind: u32,
    min_lag_ms: i64,
    /// Live frames in a row within the bound.
    within: u32,
    /// The verdict last raised: −1 behind, +1 ahead, 0 none.
    raised: i8,
}

/// A clock found off by more than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    /// Positive: the device's clock is ahead of the collector's.
    pub ahead_ms: i64,
}

impl Skew {
    pub fn direction(&self) -> &'static str {
        if self.ahead_ms > 0 {
            "ahead"
        } else {
            "behind"
        }
    }
}

impl ClockWatch {
    /// One verified frame; returns a skew when the verdict becomes
    /// "ahead" or "behind" (or flips), so a device raises once per change,
    /// not once per frame. A clock that comes back within the bound clears
    /// the verdict, and a later error is raised again.
    pub fn observe(&mut self, device_ms: u64, received_ms: u64, bound_ms: u64) -> Option<Skew> {
        let lag = i64::try_from(i128::from(received_ms) - i128::from(device_ms)).unwrap_or(
            if received_ms > device_ms {
                i64::MAX
            } else {
                i64::MIN
            },
        );
        let bound = i64::try_from(bound_ms).unwrap_or(i64::MAX);
        let last = self.last.replace((device_ms, received_ms));
        if lag < -bound {
            // From the future: no delay explains it.
            self.behind = 0;
            self.within = 0;
            return self.verdict(1, lag);
        }
        let live = last.is_some_and(|(dev, rx)| {
            let step = received_ms.saturating_sub(rx);
            let moved = device_ms.saturating_sub(dev);
            step >= MIN_STEP_MS && device_ms > dev && moved.abs_diff(step) <= step / 2
        });
        if !live {
            return None;
        }
        if lag > bound {
            self.within = 0;
            self.min_lag_ms = if self.behind == 0 {
                lag
            } else {
                self.min_lag_ms.min(lag)
            };
            self.behind += 1;
            if self.behind >= RUN {
                return self.verdict(-1, self.min_lag_ms);
            }
        } else {
            self.behind = 0;
            self.within += 1;
            if self.within >= RUN {
                self.raised = 0;
            }
        }
        None
    }

    fn verdict(&mut self, sign: i8, lag: i64) -> Option<Skew> {
        if self.raised == sign {
            return None;
        }
        self.raised = sign;
        Some(Skew {
            ahead_ms: lag.saturating_neg(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 300_000;
    const NOW: u64 = 1_800_000_000_000;

    /// Frames every `every` ms for `n` frames, the device's clock `ahead`.
    fn run(w: &mut ClockWatch, from: u64, every: u64, n: u64, ahead: i64) -> Vec<(u64, Skew)> {
        (0..n)
            .filter_map(|k| {
                let rx = from + k * every;
                let dev = u64::try_from(i128::from(rx) + i128::from(ahead)).unwrap_or(0);
                w.observe(dev, rx, BOUND).map(|s| (k, s))
            })
            .collect()
    }

    #[test]
    fn a_good_clock_and_a_drained_backlog_raise_nothing() {
        let mut w = ClockWatch::default();
        // Three hours of frames queued through an outage (one per 10.8 s),
        // sent one per 20 ms, then live frames.
        let backlog: Vec<_> = (0..1000u64)
            .filter_map(|k| w.observe(NOW - 3 * 3_600_000 + k * 10_800, NOW + k * 20, BOUND))
            .collect();
        assert!(backlog.is_empty());
        assert!(run(&mut w, NOW + 20_000, 10_000, 200, -40).is_empty());
        // A backlog sent over a slow serial line, one frame a second.
        let slow: Vec<_> = (0..100u64)
            .filter_map(|k| {
                w.observe(
                    NOW - 86_400_000 + k * 10_000,
                    NOW + 3_000_000 + k * 1000,
                    BOUND,
                )
            })
            .collect();
        assert!(slow.is_empty(), "{slow:?}");
    }

    #[test]
    fn a_clock_in_1970_is_behind_after_three_live_frames_and_raised_once() {
        let mut w = ClockWatch::default();
        let raised: Vec<_> = (0..200u64)
            .filter_map(|k| {
                w.observe(k * 10_000, NOW + k * 10_000, BOUND)
                    .map(|s| (k, s))
            })
            .collect();
        assert_eq!(raised.len(), 1, "{raised:?}");
        let (k, s) = raised[0];
        assert_eq!(k, 3, "the first frame has nothing to compare with");
        assert_eq!(s.direction(), "behind");
        assert_eq!(s.ahead_ms, -i64::try_from(NOW).unwrap());
    }

    #[test]
    fn a_clock_ahead_is_raised_at_its_first_frame_and_again_after_it_was_fixed() {
        let mut w = ClockWatch::default();
        let year = 365 * 86_400_000;
        let r = run(&mut w, NOW, 10_000, 50, year);
        assert_eq!(r, [(0, Skew { ahead_ms: year })]);
        // Fixed by NTP: three live frames within the bound clear the verdict.
        assert!(run(&mut w, NOW + 500_000, 10_000, 5, 0).is_empty());
        let r = run(&mut w, NOW + 600_000, 10_000, 5, 600_000);
        assert_eq!(r, [(0, Skew { ahead_ms: 600_000 })]);
    }

    #[test]
    fn a_clock_set_back_a_day_within_a_boot_is_raised() {
        let mut w = ClockWatch::default();
        assert!(run(&mut w, NOW, 10_000, 20, 0).is_empty());
        let r = run(&mut w, NOW + 200_000, 10_000, 20, -86_400_000);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].1.ahead_ms, -86_400_000);
    }

    #[test]
    fn absurd_times_do_not_overflow() {
        let mut w = ClockWatch::default();
        assert_eq!(
            w.observe(u64::MAX, NOW, BOUND).map(|s| s.direction()),
            Some("ahead")
        );
        let mut w = ClockWatch::default();
        assert!(
            run(&mut w, NOW, 2000, 5, -i64::MAX).is_empty(),
            "dated 0 and not moving: never live"
        );
        assert_eq!(w.observe(0, u64::MAX, BOUND), None);
    }
}
