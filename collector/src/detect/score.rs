//! One metric's detector: `learn` a robust profile from the values seen
//! during the baseline, then `score` every later value against that fixed
//! profile (DESIGN principle 7: nothing learned after approval). Two
//! detectors share the profile: a *deviation* detector (one value far
//! outside the learned range, or a moderate excess that persists) and a
//! *sustained-shift* detector (the rolling median outside the range of the
//! rolling medians learned, e.g. a cryptominer's flat 100 %). Each opens an
//! alarm once and holds it open until the metric has been back in range
//! for `resolve_after` values, so an episode is one alert (a shift that
//! begins inside an open deviation is part of it). Pure: values
//! in, verdicts out; no clocks, no I/O. After them, `Watch::score` runs
//! the change detector (`recent`), which can only add alerts. The live
//! collector (`baseline`) and the offline replay (`vigil-collector
//! detect`) run this same code.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use crate::detect::recent::Sides;
use crate::detect::recent::{ChangeSeen, ChangeTuning, Recent};

/// Values kept for the quantiles while learning; beyond it a deterministic
/// reservoir sample. 8 KiB per metric while a device is baselining.
pub const RESERVOIR: usize = 1024;

/// Thresholds, in units of the learned spread (`Profile::scale`, the
/// 1st-to-99th percentile range). The defaults were chosen on the NAB DEV
/// series (collector/DETECTION.md) and are used unchanged everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// A single value this far beyond the learned min/max opens a deviation.
    pub spike: f64,
    /// A value this far beyond counts towards persistence...
    pub hold: f64,
    /// ...and `hold_count` such values within the last `hold_of` open one.
    pub hold_count: usize,
    pub hold_of: usize,
    /// Values in the rolling mean of the sustained-shift detector.
    pub shift_window: usize,
    /// The rolling mean this far beyond the learned rolling means opens a shift.
    pub shift: f64,
    /// An open alarm closes after this many values back in range.
    pub resolve_after: usize,
    /// The change detector (`recent`): the metric against its own past.
    #[serde(default)]
    pub change: ChangeTuning,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            spike: 0.5,
            hold: 0.25,
            hold_count: 3,
            hold_of: 6,
            shift_window: 24,
            shift: 0.8,
            resolve_after: 288,
            change: ChangeTuning::default(),
        }
    }
}

impl Tuning {
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number"))
            }
        };
        pos("spike", self.spike)?;
        pos("hold", self.hold)?;
        pos("shift", self.shift)?;
        if self.hold_of == 0 || self.hold_count == 0 || self.hold_count > self.hold_of {
            return Err("hold_count must be between 1 and hold_of".into());
        }
        if self.shift_window == 0 || self.resolve_after == 0 {
            return Err("shift_window and resolve_after must be at least 1".into());
        }
        self.change.validate()
    }
}

/// What was learned about one metric. Fixed once the baseline is approved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub samples: u64,
    pub min: f64,
    pub max: f64,
    pub p01: f64,
    pub median: f64,
    pub p99: f64,
    /// Spread that thresholds are measured in: p99 - p01, at least the
    /// metric's floor.
    pub scale: f64,
    /// Range of the rolling mean over `shift_window` values.
    pub mean_min: f64,
    pub mean_max: f64,
    pub shift_window: usize,
    /// The metric's smallest spread that counts (its kind's floor).
    #[serde(default)]
    pub floor: f64,
    /// Hour-of-day (and weekday/weekend) ranges, where the baseline showed
    /// such a cycle; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasons: Option<Seasons>,
    /// How much the profile can be trusted; a low one is held to limits
    /// `LOW_CONFIDENCE_WIDEN` times as wide.
    #[serde(default)]
    pub confidence: Confidence,
}

/// Fewer samples than this and the 1st and 99th percentiles are the
/// sample's own extremes: the spread is a guess.
pub const CONFIDENT_SAMPLES: u64 = 200;
/// How much wider a low-confidence profile's limits are.
pub const LOW_CONFIDENCE_WIDEN: f64 = 2.0;

/// Whether a profile saw enough to set tight limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    #[default]
    Normal,
    /// Learned from fewer than `CONFIDENT_SAMPLES` samples.
    Low,
}

impl Confidence {
    pub fn name(self) -> &'static str {
        match self {
            Confidence::Normal => "normal",
            Confidence::Low => "low",
        }
    }
}

/// The ranges of one hour of the day (UTC), or of one hour of weekdays
/// and one of weekends when those differed. Each is learned from its hour
/// and the two beside it, so a clinic opening ten minutes late is not an
/// anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seasons {
    /// `bands` holds 48 entries (weekdays 0..24, weekends 24..48), else 24.
    pub weekend_split: bool,
    pub bands: Vec<Band>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub min: f64,
    pub max: f64,
    pub scale: f64,
    pub mean_min: f64,
    pub mean_max: f64,
}

/// Values kept per hour bucket while learning (48 buckets per metric, only
/// while a baseline is closed from the archive).
const BUCKET_RESERVOIR: usize = 256;
/// Distinct days an hour must have been seen on before its range counts.
const SEASON_DAYS: usize = 3;
/// Distinct weekend days, for a separate weekend profile.
const WEEKEND_DAYS: usize = 2;
/// A cycle is "shown" when the hours' medians differ by this many overall
/// spreads; an hour's band is never narrower than `BAND_MIN` spreads.
const SEASON_SHOWN: f64 = 0.5;
const BAND_MIN: f64 = 0.25;

/// The bucket of a time: hour of day (UTC), plus 24 on Saturday and Sunday.
pub fn bucket(time_ms: u64) -> usize {
    let day = time_ms / 86_400_000;
    let hour = usize::try_from((time_ms / 3_600_000) % 24).unwrap_or(0);
    // 1970-01-01 was a Thursday: day 0 is weekday 4 (0 = Sunday).
    let weekend = matches!((day + 4) % 7, 0 | 6);
    hour + if weekend { 24 } else { 0 }
}

/// One hour bucket while learning.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bucket {
    values: Vec<f64>,
    seen: u64,
    min: f64,
    max: f64,
    mean_min: f64,
    mean_max: f64,
    days: std::collections::BTreeSet<u64>,
    rng: u64,
}

impl Bucket {
    fn learn(&mut self, x: f64, day: u64, rolling: Option<f64>) {
        if self.seen == 0 {
            self.rng = 0x2545_f491_4f6c_dd1d;
            self.min = x;
            self.max = x;
            self.mean_min = f64::INFINITY;
            self.mean_max = f64::NEG_INFINITY;
        }
        self.seen += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if let Some(m) = rolling {
            self.mean_min = self.mean_min.min(m);
            self.mean_max = self.mean_max.max(m);
        }
        if self.days.len() < 64 {
            self.days.insert(day);
        }
        reservoir(
            &mut self.values,
            BUCKET_RESERVOIR,
            self.seen,
            x,
            &mut self.rng,
        );
    }
}

/// Algorithm R with a fixed-seed xorshift: the same input always keeps
/// the same sample.
fn reservoir(values: &mut Vec<f64>, cap: usize, seen: u64, x: f64, rng: &mut u64) {
    if values.len() < cap {
        values.push(x);
        return;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let j = *rng % seen.max(1);
    if let Some(slot) = usize::try_from(j).ok().and_then(|j| values.get_mut(j)) {
        *slot = x;
    }
}

impl Profile {
    /// The ranges in force at `time_ms`: its hour's band where the
    /// baseline had a cycle, else the whole baseline's.
    pub fn band(&self, time_ms: Option<u64>) -> Band {
        let widen = match self.confidence {
            Confidence::Normal => 1.0,
            Confidence::Low => LOW_CONFIDENCE_WIDEN,
        };
        let whole = Band {
            min: self.min,
            max: self.max,
            scale: self.scale * widen,
            mean_min: self.mean_min,
            mean_max: self.mean_max,
        };
        let (Some(s), Some(t)) = (&self.seasons, time_ms) else {
            return whole;
        };
        let b = bucket(t);
        let i = if s.weekend_split { b } else { b % 24 };
        s.bands.get(i).copied().unwrap_or(whole)
    }
}

/// Learning state of one metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Learner {
    values: Vec<f64>,
    seen: u64,
    min: f64,
    max: f64,
    recent: VecDeque<f64>,
    mean_min: f64,
    mean_max: f64,
    window: usize,
    rng: u64,
    /// Per hour bucket, for values learned with a time.
    buckets: Vec<Bucket>,
    /// The change detector's recent past, so monitoring starts with one.
    #[serde(default)]
    change: Recent,
    #[serde(default)]
    change_tuning: ChangeTuning,
}

impl Learner {
    pub fn new(t: &Tuning) -> Learner {
        let shift_window = t.shift_window;
        Learner {
            values: Vec::new(),
            seen: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            recent: VecDeque::new(),
            mean_min: f64::INFINITY,
            mean_max: f64::NEG_INFINITY,
            window: shift_window.max(1),
            rng: 0x9e37_79b9_7f4a_7c15,
            buckets: Vec::new(),
            change: Recent::default(),
            change_tuning: t.change,
        }
    }

    #[cfg(test)]
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Largest value learned (0 before any).
    pub fn max(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.max
        }
    }

    #[cfg(test)]
    pub fn learn(&mut self, x: f64) {
        self.learn_at(x, None);
    }

    /// Learns `x`, taken at `time_ms` when known (hour-of-day profiles).
    pub fn learn_at(&mut self, x: f64, time_ms: Option<u64>) {
        if !x.is_finite() {
            return;
        }
        self.seen += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.change.push(&self.change_tuning, x, time_ms);
        reservoir(&mut self.values, RESERVOIR, self.seen, x, &mut self.rng);
        self.recent.push_back(x);
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
        let rolling = (self.recent.len() == self.window).then(|| level(&self.recent));
        if let Some(m) = rolling {
            self.mean_min = self.mean_min.min(m);
            self.mean_max = self.mean_max.max(m);
        }
        if let Some(t) = time_ms {
            if self.buckets.is_empty() {
                self.buckets = vec![Bucket::default(); 48];
            }
            if let Some(b) = self.buckets.get_mut(bucket(t)) {
                b.learn(x, t / 86_400_000, rolling);
            }
        }
    }

    /// Hour-of-day bands, if every hour was seen on enough days and the
    /// hours differ; split by weekday/weekend if those differ too.
    fn seasons(&self, scale: f64, floor: f64) -> Option<Seasons> {
        if self.buckets.len() != 48 {
            return None;
        }
        let merged = |hours: &[usize]| -> Bucket {
            let mut m = Bucket::default();
            for &h in hours {
                if let Some(b) = self.buckets.get(h).filter(|b| b.seen > 0) {
                    if m.seen == 0 {
                        m.min = b.min;
                        m.max = b.max;
                        m.mean_min = b.mean_min;
                        m.mean_max = b.mean_max;
                    }
                    m.seen += b.seen;
                    m.min = m.min.min(b.min);
                    m.max = m.max.max(b.max);
                    m.mean_min = m.mean_min.min(b.mean_min);
                    m.mean_max = m.mean_max.max(b.mean_max);
                    m.values.extend_from_slice(&b.values);
                    m.days.extend(b.days.iter().copied());
                }
            }
            m
        };
        let median = |b: &Bucket| {
            let mut v = b.values.clone();
            v.sort_by(f64::total_cmp);
            quantile(&v, 0.5)
        };
        let hour = |h: usize| merged(&[h, h + 24]);
        let all: Vec<Bucket> = (0..24).map(hour).collect();
        if all
            .iter()
            .any(|b| b.days.len() < SEASON_DAYS || b.seen < self.window as u64)
        {
            return None;
        }
        let spread = |m: &[f64]| {
            let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            hi - lo
        };
        let medians: Vec<f64> = all.iter().map(median).collect();
        if spread(&medians) < SEASON_SHOWN * scale {
            return None;
        }
        let day = |h: usize, weekend: bool| self.buckets.get(h + if weekend { 24 } else { 0 });
        let days = |h: usize, weekend: bool| day(h, weekend).map_or(0, |b| b.days.len());
        let split = (0..24).all(|h| days(h, false) >= SEASON_DAYS && days(h, true) >= WEEKEND_DAYS)
            && (0..24).any(|h| match (day(h, false), day(h, true)) {
                (Some(wd), Some(we)) => (median(wd) - median(we)).abs() >= SEASON_SHOWN * scale,
                _ => false,
            });
        let band = |b: Bucket| {
            let mut v = b.values;
            v.sort_by(f64::total_cmp);
            Band {
                min: b.min,
                max: b.max,
                scale: (quantile(&v, 0.99) - quantile(&v, 0.01))
                    .max(floor)
                    .max(BAND_MIN * scale)
                    .max(1e-9),
                mean_min: b.mean_min,
                mean_max: b.mean_max,
            }
        };
        let around = |h: usize, base: usize| [base + (h + 23) % 24, base + h, base + (h + 1) % 24];
        let bands = if split {
            (0..48)
                .map(|i| band(merged(&around(i % 24, i / 24 * 24))))
                .collect()
        } else {
            (0..24)
                .map(|h| {
                    let a = around(h, 0);
                    band(merged(&[a[0], a[1], a[2], a[0] + 24, a[1] + 24, a[2] + 24]))
                })
                .collect()
        };
        Some(Seasons {
            weekend_split: split,
            bands,
        })
    }

    /// The profile learned so far, or `None` before a full rolling window.
    /// `floor` is the smallest spread that counts as variation for this
    /// metric (e.g. one CPU percentage point), so a flat baseline does not
    /// make every wiggle an anomaly.
    pub fn profile(&self, floor: f64) -> Option<Profile> {
        if self.recent.len() < self.window {
            return None;
        }
        let mut s = self.values.clone();
        s.sort_by(f64::total_cmp);
        let p01 = quantile(&s, 0.01);
        let p99 = quantile(&s, 0.99);
        let scale = (p99 - p01).max(floor).max(1e-9);
        Some(Profile {
            samples: self.seen,
            min: self.min,
            max: self.max,
            p01,
            median: quantile(&s, 0.5),
            p99,
            scale,
            mean_min: self.mean_min,
            mean_max: self.mean_max,
            shift_window: self.window,
            floor,
            seasons: self.seasons(scale, floor),
            confidence: if self.seen < CONFIDENT_SAMPLES {
                Confidence::Low
            } else {
                Confidence::Normal
            },
        })
    }

    /// The last values, so monitoring's rolling mean starts full.
    pub fn recent(&self) -> impl Iterator<Item = f64> + '_ {
        self.recent.iter().copied()
    }
}

/// The rolling level: the median of the window, so a burst shorter than
/// half the window (in the baseline or after) does not move it.
fn level(v: &VecDeque<f64>) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(f64::total_cmp);
    quantile(&s, 0.5)
}

#[allow(dead_code)]
fn mean(v: &VecDeque<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    // Exact, not a running sum: no drift over months of values.
    v.iter().sum::<f64>() / v.len() as f64
}

/// Linear interpolation between the closest ranks of sorted `s`.
fn quantile(s: &[f64], p: f64) -> f64 {
    let Some(last) = s.len().checked_sub(1) else {
        return 0.0;
    };
    let pos = p * last as f64;
    let lo = pos.floor();
    let i = lo as usize;
    let a = s.get(i).copied().unwrap_or(0.0);
    let b = s.get((i + 1).min(last)).copied().unwrap_or(a);
    a + (b - a) * (pos - lo)
}

/// An alarm of one detector: opens once, stays open while the metric is
/// out of range, closes after `resolve_after` values back in range.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Alarm {
    pub open: bool,
    quiet: usize,
    /// Largest excess of the open episode.
    pub peak: f64,
    /// Values out of range in the open episode, and how many of them were
    /// last reported (`Watch::REPORT_EVERY`).
    #[serde(default)]
    pub hits: u64,
    #[serde(default)]
    reported: u64,
}

/// An open alarm's alert is updated (count, last seen, the latest figures)
/// once per this many further values out of range.
pub const REPORT_EVERY: u64 = 60;

impl Alarm {
    /// True when this value opens the alarm.
    fn step(&mut self, hit: bool, excess: f64, resolve_after: usize) -> bool {
        if hit {
            self.quiet = 0;
            self.peak = self.peak.max(excess);
            self.hits += 1;
            if !self.open {
                self.open = true;
                self.peak = excess;
                self.hits = 1;
                self.reported = 1;
                return true;
            }
        } else if self.open {
            self.quiet += 1;
            if self.quiet >= resolve_after {
                self.open = false;
                self.peak = 0.0;
            }
        }
        false
    }

    /// True when the open episode has gone on long enough since it was
    /// last reported: its alert should be updated.
    fn due(&mut self) -> bool {
        if self.open && self.hits >= self.reported + REPORT_EVERY {
            self.reported = self.hits;
            return true;
        }
        false
    }
}

/// Running state of one metric in monitoring. Survives restarts (serde).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Watch {
    excesses: VecDeque<f64>,
    recent: VecDeque<f64>,
    pub deviation: Alarm,
    pub shift: Alarm,
    /// The change detector's state (the metric's recent past).
    #[serde(default)]
    pub change: Recent,
}

/// The verdict on one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Deviation relative to the thresholds, in [0, 1]; 0.5 is at a threshold.
    pub score: f64,
    /// How far beyond the learned range, in learned spreads (0 inside).
    pub excess: f64,
    /// How far the rolling mean is beyond the learned rolling means, in
    /// learned spreads (what a sustained shift is judged on).
    pub shift_excess: f64,
    pub rolling_mean: f64,
    /// A deviation alarm opened on this value.
    pub deviation: bool,
    /// A sustained-shift alarm opened on this value.
    pub shift: bool,
    /// The change detector raised on this value (never while one of the
    /// baseline's alarms opens on it).
    pub change: Option<ChangeSeen>,
    /// An open deviation or shift went on for `REPORT_EVERY` more values
    /// out of range: its alert is updated (not a new one).
    pub ongoing: Option<Ongoing>,
}

/// Which open alarm an update is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ongoing {
    Deviation,
    Shift,
}

impl Verdict {
    pub fn anomaly(&self) -> bool {
        self.deviation || self.shift || self.change.is_some()
    }
}

impl Watch {
    /// Starts monitoring with the rolling window the learner ended with.
    pub fn after(learner: Option<&Learner>) -> Watch {
        Watch {
            recent: learner.map(|l| l.recent().collect()).unwrap_or_default(),
            change: learner.map(|l| l.change.clone()).unwrap_or_default(),
            ..Watch::default()
        }
    }

    /// Bytes this detector state holds in memory (the cost benchmark
    /// measures it; the tests bound it).
    #[allow(dead_code)]
    pub fn state_bytes(&self) -> usize {
        use std::mem::size_of;
        size_of::<Watch>() - size_of::<Recent>()
            + (self.excesses.capacity() + self.recent.capacity()) * size_of::<f64>()
            + self.change.heap_bytes()
    }

    /// Scores `x`, taken at `time_ms` (when known: hour-of-day bands).
    pub fn score(
        &mut self,
        p: &Profile,
        t: &Tuning,
        sides: Sides,
        x: f64,
        time_ms: Option<u64>,
    ) -> Verdict {
        let band = p.band(time_ms);
        let beyond = |v: f64, lo: f64, hi: f64| match sides {
            Sides::Both => (v - hi).max(lo - v).max(0.0),
            Sides::High => (v - hi).max(0.0),
        };
        let excess = if x.is_finite() {
            beyond(x, band.min, band.max) / band.scale
        } else {
            0.0
        };
        self.excesses.push_back(excess);
        while self.excesses.len() > t.hold_of {
            self.excesses.pop_front();
        }
        let held = self.excesses.iter().filter(|&&e| e > t.hold).count();
        let dev_hit = excess > t.spike || held >= t.hold_count;

        if x.is_finite() {
            self.recent.push_back(x);
        }
        while self.recent.len() > p.shift_window {
            self.recent.pop_front();
        }
        let m = level(&self.recent);
        let shift_excess = if self.recent.len() == p.shift_window {
            beyond(m, band.mean_min, band.mean_max) / band.scale
        } else {
            0.0
        };
        let shift_hit = shift_excess > t.shift;
        let r = (excess / t.spike).max(shift_excess / t.shift);
        let deviation = self.deviation.step(dev_hit, excess, t.resolve_after);
        // A shift that starts while a deviation is open is the same
        // episode: its alarm opens, silently.
        let shift =
            self.shift.step(shift_hit, shift_excess, t.resolve_after) && !self.deviation.open;
        // The change detector only adds: judged after the baseline's
        // detectors, silent on a value that opened one of their alarms.
        let change = if deviation || shift || !t.change.enabled {
            self.change.hush();
            self.change.push(&t.change, x, time_ms);
            None
        } else {
            self.change.judge(&t.change, sides, p.floor, x, time_ms)
        };
        let ongoing = if deviation || shift {
            None
        } else if dev_hit && self.deviation.due() {
            Some(Ongoing::Deviation)
        } else if shift_hit && !self.deviation.open && self.shift.due() {
            Some(Ongoing::Shift)
        } else {
            None
        };
        Verdict {
            score: r / (1.0 + r),
            excess,
            shift_excess,
            rolling_mean: m,
            deviation,
            shift,
            change,
            ongoing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(values: impl IntoIterator<Item = f64>, t: &Tuning) -> (Learner, Profile) {
        let mut l = Learner::new(t);
        for v in values {
            l.learn(v);
        }
        let p = l.profile(0.0).expect("a full window");
        (l, p)
    }

    fn noise(i: usize) -> f64 {
        // Deterministic wiggle between 10 and 20.
        10.0 + ((i * 7919) % 101) as f64 / 10.0
    }

    #[test]
    fn quantiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert!((quantile(&s, 0.99) - 4.96).abs() < 1e-12);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn in_range_values_raise_nothing_and_a_spike_opens_one_alarm() {
        let t = Tuning::default();
        let (l, p) = learned((0..500).map(noise), &t);
        assert_eq!(p.samples, 500);
        assert!(p.min >= 10.0 && p.max <= 20.0);
        let mut w = Watch::after(Some(&l));
        for i in 500..1500 {
            let v = w.score(&p, &t, Sides::Both, noise(i), None);
            assert!(!v.anomaly(), "value {} at {i} flagged", noise(i));
            assert!(v.score < 0.5);
        }
        let v = w.score(&p, &t, Sides::Both, 40.0, None);
        assert!(v.deviation && v.score > 0.5, "{v:?}");
        // Still out of range: the open alarm is not raised again, but its
        // alert is updated once per REPORT_EVERY values out of range.
        let updates = (1..=2 * REPORT_EVERY)
            .map(|_| w.score(&p, &t, Sides::Both, 45.0, None))
            .inspect(|v| assert!(!v.deviation))
            .filter(|v| v.ongoing == Some(Ongoing::Deviation))
            .count();
        assert_eq!(updates, 2);
        assert_eq!(w.deviation.hits, 2 * REPORT_EVERY + 1);
        // Back in range long enough (the persistence window emptied, then
        // `resolve_after` values): closed, and a new spike raises again.
        for i in 0..t.hold_of + t.resolve_after {
            assert!(!w.score(&p, &t, Sides::Both, noise(i), None).anomaly());
        }
        assert!(!w.deviation.open);
        assert!(w.score(&p, &t, Sides::Both, 40.0, None).deviation);
    }

    #[test]
    fn a_moderate_excess_needs_persistence() {
        let t = Tuning::default();
        let (l, p) = learned((0..500).map(noise), &t);
        let mut w = Watch::after(Some(&l));
        let moderate = p.max + 0.3 * p.scale;
        assert!(!w.score(&p, &t, Sides::Both, moderate, None).deviation);
        assert!(!w.score(&p, &t, Sides::Both, moderate, None).deviation);
        assert!(w.score(&p, &t, Sides::Both, moderate, None).deviation);
    }

    #[test]
    fn a_flat_shift_inside_the_range_is_caught_by_the_rolling_median() {
        let t = Tuning {
            shift: 0.2,
            ..Tuning::default()
        };
        let (l, p) = learned((0..500).map(noise), &t);
        let mut w = Watch::after(Some(&l));
        // 19.9 is inside [min, max] but no learned window's median was that high.
        let opened: Vec<bool> = (0..t.shift_window)
            .map(|_| w.score(&p, &t, Sides::Both, 19.9, None).shift)
            .collect();
        assert_eq!(opened.iter().filter(|&&b| b).count(), 1);
        assert!(!w.deviation.open);
    }

    #[test]
    fn a_short_burst_in_the_baseline_does_not_hide_a_sustained_level() {
        // Quiet at 5 with a burst to 60 while learning (1 % of the values,
        // so the spread is still the quiet one's): the learned range
        // reaches 60, the learned rolling medians do not.
        let t = Tuning::default();
        let v = |i: usize| {
            if (200..204).contains(&i) {
                60.0
            } else {
                4.0 + (i % 3) as f64
            }
        };
        let mut l = Learner::new(&t);
        for i in 0..400 {
            l.learn(v(i));
        }
        let p = l.profile(10.0).expect("profile");
        assert!(p.max >= 60.0 && p.mean_max < 10.0, "{p:?}");
        assert_eq!(p.confidence, Confidence::Normal);
        let mut w = Watch::after(Some(&l));
        // Half of the range, held: inside the extremes, far above the typical level.
        let opened = (0..t.shift_window)
            .map(|_| w.score(&p, &t, Sides::Both, 30.0, None))
            .position(|v| v.shift);
        // Opened on the value that makes it half the window: the median moved.
        assert_eq!(opened, Some(t.shift_window / 2 - 1));
    }

    #[test]
    fn a_watched_metric_keeps_at_most_8_kib() {
        let t = Tuning::default();
        let (l, p) = learned((0..750).map(noise), &t);
        let mut w = Watch::after(Some(&l));
        // Three weeks of minutes, with a daily rhythm and a drift.
        for i in 0..30_240u64 {
            let v = noise(i as usize) + ((i / 60) % 24) as f64 + (i / 10_000) as f64;
            w.score(&p, &t, Sides::Both, v, Some(1_704_067_200_000 + i * 60_000));
        }
        assert!(w.state_bytes() <= 8 * 1024, "{} bytes", w.state_bytes());
    }

    #[test]
    fn few_samples_are_low_confidence_with_wider_limits() {
        let t = Tuning::default();
        let (_, few) = learned((0..100).map(noise), &t);
        let (_, many) = learned((0..500).map(noise), &t);
        assert_eq!(few.confidence, Confidence::Low);
        assert_eq!(many.confidence, Confidence::Normal);
        assert_eq!(few.band(None).scale, few.scale * LOW_CONFIDENCE_WIDEN);
        assert_eq!(many.band(None).scale, many.scale);
    }

    #[test]
    fn high_side_only_ignores_drops() {
        let t = Tuning::default();
        let (l, p) = learned((0..500).map(noise), &t);
        let mut w = Watch::after(Some(&l));
        for _ in 0..100 {
            assert!(!w.score(&p, &t, Sides::High, 0.0, None).anomaly());
        }
        assert!(w.score(&p, &t, Sides::Both, 0.0, None).deviation);
    }

    #[test]
    fn the_reservoir_is_bounded_and_deterministic() {
        let t = Tuning::default();
        let (a, pa) = learned((0..10_000).map(noise), &t);
        let (_, pb) = learned((0..10_000).map(noise), &t);
        assert_eq!(a.values.len(), RESERVOIR);
        assert_eq!(pa, pb);
        assert_eq!(pa.samples, 10_000);
    }

    /// Seven days from Monday 2024-01-01 00:00 UTC, every 5 minutes: 10 at
    /// night, 60 from 08:00 to 18:00 on weekdays (and on weekends when
    /// `busy_weekends`), with a small wiggle.
    fn clinic_week(busy_weekends: bool) -> Vec<(u64, f64)> {
        let monday = 1_704_067_200_000u64;
        (0..7 * 288u64)
            .map(|i| {
                let t = monday + i * 300_000;
                let hour = (t / 3_600_000) % 24;
                let weekend = bucket(t) >= 24;
                let day = (8..18).contains(&hour) && (busy_weekends || !weekend);
                (t, if day { 60.0 } else { 10.0 } + (i % 7) as f64 * 0.3)
            })
            .collect()
    }

    #[test]
    fn a_daily_cycle_is_learned_per_hour_and_weekends_apart() {
        let t = Tuning::default();
        let week = clinic_week(true);
        let mut timed = Learner::new(&t);
        let mut untimed = Learner::new(&t);
        for &(at, v) in &week {
            timed.learn_at(v, Some(at));
            untimed.learn(v);
        }
        let p = timed.profile(1.0).expect("profile");
        let seasons = p.seasons.as_ref().expect("the cycle is shown");
        assert!(!seasons.weekend_split, "weekends look like weekdays here");
        assert!(untimed.profile(1.0).expect("profile").seasons.is_none());
        let next_monday = 1_704_067_200_000u64 + 7 * 86_400_000;
        let at = |h: u64| Some(next_monday + h * 3_600_000);
        // Another ordinary Monday raises nothing...
        let mut w = Watch::after(Some(&timed));
        for &(when, v) in &week[..288] {
            let v = w.score(&p, &t, Sides::Both, v, Some(when + 7 * 86_400_000));
            assert!(!v.anomaly(), "{when}: {v:?}");
        }
        // ...but daytime load at 03:00, inside the whole week's range, is
        // outside that hour's.
        let mut night = Watch::after(Some(&timed));
        assert!(night.score(&p, &t, Sides::Both, 60.0, at(3)).deviation);
        let mut blind = Watch::after(Some(&timed));
        assert!(!blind.score(&p, &t, Sides::Both, 60.0, None).anomaly());
        // Round trip through the export format.
        let back: Profile =
            serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("parse");
        assert_eq!(back, p);
    }

    #[test]
    fn quiet_weekends_get_their_own_hours() {
        let t = Tuning::default();
        let mut l = Learner::new(&t);
        // Two weeks, so weekend hours are seen on enough days.
        let mut weeks = clinic_week(false);
        weeks.extend(
            clinic_week(false)
                .into_iter()
                .map(|(at, v)| (at + 7 * 86_400_000, v)),
        );
        for (at, v) in weeks {
            l.learn_at(v, Some(at));
        }
        let p = l.profile(1.0).expect("profile");
        assert!(p
            .seasons
            .as_ref()
            .is_some_and(|s| s.weekend_split && s.bands.len() == 48));
        let saturday_noon = 1_704_067_200_000u64 + 19 * 86_400_000 + 12 * 3_600_000;
        assert_eq!(bucket(saturday_noon), 36);
        let mut w = Watch::after(Some(&l));
        assert!(
            w.score(&p, &t, Sides::Both, 60.0, Some(saturday_noon))
                .deviation
        );
        let mut w = Watch::after(Some(&l));
        assert!(
            !w.score(
                &p,
                &t,
                Sides::Both,
                60.0,
                Some(saturday_noon - 2 * 86_400_000)
            )
            .deviation,
            "Thursday noon"
        );
    }

    #[test]
    fn no_profile_before_a_full_window_and_floors_apply() {
        let t = Tuning::default();
        let mut l = Learner::new(&t);
        for _ in 0..t.shift_window - 1 {
            l.learn(5.0);
        }
        assert!(l.profile(0.0).is_none());
        l.learn(5.0);
        assert_eq!(l.profile(2.0).map(|p| p.scale), Some(2.0));
        l.learn(f64::NAN);
        assert_eq!(l.seen(), t.shift_window as u64);
    }
}
