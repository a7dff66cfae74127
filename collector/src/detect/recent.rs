//! The change detector: a metric against its own recent past, not against
//! the approved baseline. It keeps the last `history` values (for the
//! metric's spread) and a long memory of `blocks` blocks of `block` values,
//! each block keeping only its extremes: of the values, of the `short`
//! window's mean, and of the residuals against a daily and a weekly
//! pattern (what each slot of the day or week was in the periods before).
//! It flags a value beyond every remembered value (a new extreme), a short
//! mean beyond every remembered one (a new level), or a residual beyond
//! every remembered residual (off the daily or weekly pattern). Values
//! reach the memory only `short` values after they were scored, so a
//! change is judged against what came before it, not against itself.
//!
//! It can only add alerts (DESIGN principle 7): the frozen baseline's
//! detectors in `score` run first and unchanged, and this one stays
//! silent on a value that opened one of theirs and for `quiet` values
//! after any alert (the same episode). What it has seen after approval
//! widens nothing the baseline allows. Pure and bounded (under 8 KiB per
//! metric with the defaults, a test says so); no clocks, no I/O.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Which way a metric is allowed to deviate before it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sides {
    Both,
    /// Only rises count (egress volume: a quiet network is not exfiltration).
    High,
}

/// Thresholds of the change detector, in units of the history's spread
/// (its 1st-to-99th percentile range) for values and means, and as a
/// ratio for spreads. Chosen by the tuning protocol in collector/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeTuning {
    /// Off: the frozen baseline's detectors alone (`detect --no-change`).
    pub enabled: bool,
    /// Values kept as the recent past.
    pub history: usize,
    /// Values in the short window whose mean is judged.
    pub short: usize,
    /// Values per block of the long memory.
    pub block: usize,
    /// A value this far beyond the history's extremes is a new extreme.
    pub spike: f64,
    /// The short window's mean this far beyond every block mean: a new level.
    pub level: f64,
    /// Values after an alert (of any detector on this metric) before the
    /// change detector may raise again.
    pub quiet: usize,
    /// History needed before it raises anything.
    pub arm_after: usize,
    /// Slots of the day for the daily pattern (0: no daily pattern).
    pub slots: usize,
    /// Weight of the newest day in a slot's expected value.
    pub day_weight: f64,
    /// Slots of the week for the weekly pattern (0: none). Where a
    /// week is behind a slot, the weekly pattern is judged instead of
    /// the daily one.
    pub week_slots: usize,
    /// Blocks remembered: the long memory of extremes, levels, spreads
    /// and daily residuals.
    pub blocks: usize,
    /// Values with residuals a pattern needs remembered before it judges.
    pub season_after: usize,
    /// A residual this far beyond the recent residuals (in their spreads)
    /// is off the daily pattern.
    pub season: f64,
}

impl Default for ChangeTuning {
    fn default() -> Self {
        ChangeTuning {
            enabled: true,
            history: 256,
            short: 12,
            block: 192,
            spike: 0.5,
            level: 0.5,
            quiet: 144,
            arm_after: 144,
            slots: 24,
            day_weight: 0.25,
            week_slots: 126,
            blocks: 96,
            season: 0.1,
            season_after: 864,
        }
    }
}

impl ChangeTuning {
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=1024).contains(&self.history) {
            return Err("change.history must be between 16 and 1024 values".into());
        }
        if self.short < 2 || self.short * 4 > self.history {
            return Err("change.short must be at least 2 and at most a quarter of history".into());
        }
        if !(1..=1024).contains(&self.block) {
            return Err("change.block must be between 1 and 1024".into());
        }
        for (name, v) in [("spike", self.spike), ("level", self.level)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("change.{name} must be a positive number"));
            }
        }
        if self.arm_after > self.history {
            return Err("change.arm_after must not exceed change.history".into());
        }
        if self.slots > 288 || self.week_slots > 336 {
            return Err(
                "change.slots must be at most 288 and change.week_slots at most 336".into(),
            );
        }
        if !(self.day_weight > 0.0 && self.day_weight <= 1.0) {
            return Err("change.day_weight must be in (0, 1]".into());
        }
        if !(2..=1024).contains(&self.blocks) {
            return Err("change.blocks must be between 2 and 1024".into());
        }
        if !(self.season.is_finite() && self.season > 0.0) {
            return Err("change.season must be a positive number".into());
        }
        Ok(())
    }
}

/// What the change detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// One value beyond anything in the recent past.
    Extreme,
    /// The short window's mean beyond every recent block's.
    Level,
    /// The value far from what this time of day was on the last days.
    Daily,
    /// The value far from what this time of the week was on the last weeks.
    Weekly,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Extreme => "new extreme",
            Change::Level => "change of level",
            Change::Daily => "off the daily pattern",
            Change::Weekly => "off the weekly pattern",
        }
    }
}

/// The figures a change alert is judged on: what was expected from the
/// recent past and what was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeSeen {
    pub what: Change,
    /// The range the recent past allowed (for `Spread`, of the spreads).
    pub expected: (f64, f64),
    /// The figure that fired: the value, the short mean or the short spread.
    pub seen: f64,
    /// How far beyond, in the detector's own units (spreads or log ratio).
    pub excess: f64,
    /// Values the judgement was made on.
    pub history: usize,
}

/// Running state of the change detector on one metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recent {
    /// The last `short` values, not yet history.
    short: VecDeque<Fresh>,
    /// Sum of the short window's values.
    short_sum: f64,
    /// The last `history` values, oldest first, for the spread...
    ring: VecDeque<f32>,
    /// ...and the same values sorted.
    sorted: Vec<f32>,
    /// The block being filled.
    acc: Summary,
    acc_n: usize,
    /// Whole blocks, oldest first: the long memory.
    blocks: VecDeque<Summary>,
    /// Values since this metric's last alert.
    since: u64,
    /// The daily and weekly patterns, one entry per slot.
    slots: Vec<Slot>,
    week: Vec<Slot>,
}

/// Serde for f32 that may be NaN or infinite (JSON has neither): written
/// as null, read back as NaN, which every use here takes as "none".
mod nan {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_some(v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }

    /// The same for a (low, high) range.
    pub mod pair {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(v: &(f32, f32), s: S) -> Result<S::Ok, S::Error> {
            let f = |x: f32| x.is_finite().then_some(x);
            (f(v.0), f(v.1)).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(f32, f32), D::Error> {
            let (a, b) = <(Option<f32>, Option<f32>)>::deserialize(d)?;
            Ok((a.unwrap_or(f32::NAN), b.unwrap_or(f32::NAN)))
        }
    }
}

/// A value in the short window: with its residuals against the daily and
/// weekly patterns (NaN: none yet) and the short mean when it came.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Fresh {
    value: f32,
    #[serde(with = "nan")]
    daily: f32,
    #[serde(with = "nan")]
    weekly: f32,
    #[serde(with = "nan")]
    mean: f32,
}

/// Residuals of one value against the daily and weekly patterns.
#[derive(Debug, Clone, Copy, Default)]
struct Residuals {
    daily: Option<f64>,
    weekly: Option<f64>,
}

/// The extremes of one block of values: of the values, of the short
/// means and of the residuals (`lo > hi`: none yet).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Summary {
    #[serde(with = "nan::pair")]
    values: (f32, f32),
    #[serde(with = "nan::pair")]
    means: (f32, f32),
    #[serde(with = "nan::pair")]
    daily: (f32, f32),
    #[serde(with = "nan::pair")]
    weekly: (f32, f32),
}

const EMPTY: (f32, f32) = (f32::INFINITY, f32::NEG_INFINITY);

impl Default for Summary {
    fn default() -> Self {
        Summary {
            values: EMPTY,
            means: EMPTY,
            daily: EMPTY,
            weekly: EMPTY,
        }
    }
}

fn widen(p: &mut (f32, f32), v: f32) {
    if v.is_finite() {
        p.0 = p.0.min(v);
        p.1 = p.1.max(v);
    }
}

fn join(p: &mut (f64, f64), q: (f32, f32)) {
    if q.0 <= q.1 {
        p.0 = p.0.min(f64::from(q.0));
        p.1 = p.1.max(f64::from(q.1));
    }
}

/// The residual of `x` at `time_ms` against a pattern of `n` slots over
/// `period` ms (what its slot was in the periods before, the newest
/// weighted `weight`), after which `x` joins its slot. `None` until the
/// slot has a whole period behind it.
fn against(
    slots: &mut Vec<Slot>,
    n: usize,
    period: u64,
    weight: f64,
    x: f64,
    time_ms: u64,
) -> Option<f64> {
    if n == 0 {
        return None;
    }
    if slots.len() != n {
        *slots = vec![Slot::default(); n];
    }
    // Only equality matters: the number may wrap.
    let now = (time_ms / period) as u16;
    let i = usize::try_from((time_ms % period) * n as u64 / period).ok()?;
    let s = slots.get_mut(i)?;
    if s.n > 0 && s.period != now {
        let before = f64::from(s.sum) / f64::from(s.n);
        s.expected = if s.expected.is_nan() {
            before as f32
        } else {
            (f64::from(s.expected) + weight * (before - f64::from(s.expected))) as f32
        };
        s.sum = 0.0;
        s.n = 0;
    }
    s.period = now;
    if s.n < u16::MAX {
        s.sum += x as f32;
        s.n += 1;
    }
    (!s.expected.is_nan()).then(|| x - f64::from(s.expected))
}

/// One slot of the day: what it was on the days before (weighted towards
/// the newest) and what it is so far today.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Slot {
    /// NaN until a whole period is behind the slot.
    #[serde(with = "nan")]
    expected: f32,
    /// The current period's values so far: sum and count.
    sum: f32,
    n: u16,
    /// The current period (its number, wrapping).
    period: u16,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            expected: f32::NAN,
            sum: 0.0,
            n: 0,
            period: 0,
        }
    }
}

fn quantile(sorted: &[f32], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let at = p * last as f64;
    let i = at.floor() as usize;
    let a = f64::from(sorted.get(i).copied().unwrap_or(0.0));
    let b = f64::from(sorted.get((i + 1).min(last)).copied().unwrap_or(0.0));
    a + (b - a) * (at - at.floor())
}

fn pos(sorted: &[f32], x: f32) -> usize {
    sorted.partition_point(|v| v.total_cmp(&x).is_lt())
}

impl Recent {
    /// Bytes this state holds on the heap and inline (the tests and the
    /// cost benchmark measure it).
    #[allow(dead_code)]
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        size_of::<Recent>()
            + self.short.capacity() * size_of::<Fresh>()
            + (self.ring.capacity() + self.sorted.capacity()) * size_of::<f32>()
            + self.blocks.capacity() * size_of::<Summary>()
            + (self.slots.capacity() + self.week.capacity()) * size_of::<Slot>()
    }

    /// Another alert on this metric just opened: stay quiet for a while.
    pub fn hush(&mut self) {
        self.since = 0;
    }

    /// Takes `x` in without judging it: learning, or a value another
    /// detector already raised on.
    pub fn push(&mut self, t: &ChangeTuning, x: f64, time_ms: Option<u64>) {
        if x.is_finite() {
            let r = self.residuals(t, x, time_ms);
            self.push_short(t, x, r);
        }
    }

    /// The short window's mean, once it is full.
    fn short_mean(&self, t: &ChangeTuning) -> Option<f64> {
        (self.short.len() == t.short).then(|| self.short_sum / t.short as f64)
    }

    fn push_short(&mut self, t: &ChangeTuning, x: f64, r: Residuals) {
        self.since = self.since.saturating_add(1);
        self.short_sum += x;
        let f32_or_nan = |r: Option<f64>| r.map_or(f32::NAN, |r| r as f32);
        // Room first, so no buffer grows past its bound.
        while self.short.len() >= t.short {
            let Some(f) = self.short.pop_front() else {
                break;
            };
            self.short_sum -= f64::from(f.value);
            self.remember(t, f);
        }
        if self.short.capacity() < t.short {
            self.short.reserve_exact(t.short - self.short.len());
        }
        self.short.push_back(Fresh {
            value: x as f32,
            daily: f32_or_nan(r.daily),
            weekly: f32_or_nan(r.weekly),
            mean: f32::NAN,
        });
        let mean = self.short_mean(t).map_or(f32::NAN, |m| m as f32);
        if let Some(last) = self.short.back_mut() {
            last.mean = mean;
        }
    }

    fn remember(&mut self, t: &ChangeTuning, f: Fresh) {
        let v = f.value;
        while self.ring.len() >= t.history {
            if let Some(old) = self.ring.pop_front() {
                let at = pos(&self.sorted, old);
                if at < self.sorted.len() {
                    self.sorted.remove(at);
                }
            }
        }
        if self.ring.capacity() < t.history {
            self.ring.reserve_exact(t.history - self.ring.len());
            self.sorted.reserve_exact(t.history - self.sorted.len());
        }
        self.ring.push_back(v);
        let at = pos(&self.sorted, v);
        self.sorted.insert(at, v);
        widen(&mut self.acc.values, v);
        widen(&mut self.acc.means, f.mean);
        widen(&mut self.acc.daily, f.daily);
        widen(&mut self.acc.weekly, f.weekly);
        self.acc_n += 1;
        if self.acc_n >= t.block {
            while self.blocks.len() >= t.blocks {
                self.blocks.pop_front();
            }
            if self.blocks.capacity() < t.blocks {
                self.blocks.reserve_exact(t.blocks - self.blocks.len());
            }
            self.blocks.push_back(std::mem::take(&mut self.acc));
            self.acc_n = 0;
        }
    }

    /// The residuals of `x` at `time_ms` against the daily and weekly
    /// patterns (the days and weeks before), and takes `x` into its slots.
    fn residuals(&mut self, t: &ChangeTuning, x: f64, time_ms: Option<u64>) -> Residuals {
        let Some(time_ms) = time_ms else {
            return Residuals::default();
        };
        const DAY: u64 = 86_400_000;
        Residuals {
            daily: against(&mut self.slots, t.slots, DAY, t.day_weight, x, time_ms),
            weekly: against(
                &mut self.week,
                t.week_slots,
                7 * DAY,
                t.day_weight,
                x,
                time_ms,
            ),
        }
    }

    /// The ranges the long memory allows: values, short means, daily and
    /// weekly residuals (these once most blocks have them).
    fn ranges(&self, t: &ChangeTuning) -> [Option<(f64, f64)>; 4] {
        let mut out = [(f64::INFINITY, f64::NEG_INFINITY); 4];
        let (mut daily, mut weekly) = (0, 0);
        for b in self.blocks.iter().chain(std::iter::once(&self.acc)) {
            join(&mut out[0], b.values);
            join(&mut out[1], b.means);
            join(&mut out[2], b.daily);
            join(&mut out[3], b.weekly);
            daily += usize::from(b.daily.0 <= b.daily.1);
            weekly += usize::from(b.weekly.0 <= b.weekly.1);
        }
        let ok = |p: (f64, f64), n: usize| (p.0 <= p.1 && n * 2 > self.blocks.len()).then_some(p);
        // A pattern's residuals count once enough of them are remembered.
        let enough = |n: usize| n * t.block >= t.season_after;
        [
            ok(out[0], usize::MAX / 4),
            ok(out[1], usize::MAX / 4),
            ok(out[2], daily).filter(|_| enough(daily)),
            ok(out[3], weekly).filter(|_| enough(weekly)),
        ]
    }

    /// Judges `x` against the recent past, then takes it in. `floor` is
    /// the metric's smallest spread that counts.
    pub fn judge(
        &mut self,
        t: &ChangeTuning,
        sides: Sides,
        floor: f64,
        x: f64,
        time_ms: Option<u64>,
    ) -> Option<ChangeSeen> {
        if !x.is_finite() {
            return None;
        }
        let armed = self.ring.len() >= t.arm_after.max(t.short * 2);
        let quiet = self.since >= t.quiet as u64;
        let residual = self.residuals(t, x, time_ms);
        self.push_short(t, x, residual);
        if !armed {
            return None;
        }
        let [values, means, daily, weekly] = self.ranges(t);
        // The weekly pattern where a week is behind it, else the daily.
        let (residual, residuals, what) = match (residual.weekly, weekly) {
            (Some(r), Some(range)) => (Some(r), Some(range), Change::Weekly),
            _ => (residual.daily, daily, Change::Daily),
        };
        let values = values?;
        let scale = (quantile(&self.sorted, 0.99) - quantile(&self.sorted, 0.01))
            .max(floor)
            .max(1e-9 * values.0.abs().max(values.1.abs()))
            .max(f64::MIN_POSITIVE);
        let beyond = |v: f64, (lo, hi): (f64, f64)| match sides {
            Sides::Both => (v - hi).max(lo - v).max(0.0),
            Sides::High => (v - hi).max(0.0),
        };
        let history = self.ring.len().max(self.blocks.len() * t.block);
        let seen = |what, expected, seen, excess| {
            Some(ChangeSeen {
                what,
                expected,
                seen,
                excess,
                history,
            })
        };
        let mut found = None;
        let e = beyond(x, values) / scale;
        if e > t.spike {
            found = seen(Change::Extreme, values, x, e);
        }
        if let (None, Some(m), Some(range)) = (found, self.short_mean(t), means) {
            let e = beyond(m, range) / scale;
            if e > t.level {
                found = seen(Change::Level, range, m, e);
            }
        }
        if let (None, Some(r), Some(range)) = (found, residual, residuals) {
            let e = beyond(r, range) / scale;
            if e > t.season {
                found = seen(what, (x - r + range.0, x - r + range.1), x, e);
            }
        }
        if found.is_some() && quiet {
            self.since = 0;
            return found;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: usize) -> f64 {
        10.0 + ((i * 7919) % 101) as f64 / 10.0
    }

    fn primed(t: &ChangeTuning) -> Recent {
        let mut r = Recent::default();
        for i in 0..t.history.max(t.quiet) + t.short {
            r.push(t, noise(i), None);
        }
        r
    }

    #[test]
    fn ordinary_values_raise_nothing_and_a_new_extreme_raises_once() {
        let t = ChangeTuning::default();
        let mut r = primed(&t);
        for i in 0..5000 {
            assert_eq!(
                r.judge(&t, Sides::Both, 0.0, noise(i), None),
                None,
                "at {i}"
            );
        }
        let seen = r
            .judge(&t, Sides::Both, 0.0, 40.0, None)
            .expect("a new extreme");
        assert_eq!(seen.what, Change::Extreme);
        assert_eq!(seen.seen, 40.0);
        assert!(
            seen.expected.0 >= 10.0 && seen.expected.1 <= 20.0,
            "{seen:?}"
        );
        // The same episode: quiet for `quiet` values, then it may raise again.
        for _ in 0..t.quiet {
            assert_eq!(r.judge(&t, Sides::Both, 0.0, 80.0, None), None);
        }
        assert!(r.judge(&t, Sides::Both, 0.0, 200.0, None).is_some());
    }

    #[test]
    fn a_level_inside_the_range_is_a_change() {
        let t = ChangeTuning::default();
        let mut r = Recent::default();
        // Between 10 and 20, with a rare single value at 40.
        for i in 0..t.history.max(t.quiet) + t.short {
            r.push(&t, if i % 150 == 0 { 40.0 } else { noise(i) }, None);
        }
        // 30 is inside [10, 40] but no short window averaged that high.
        let opened: Vec<Change> = (0..t.short)
            .filter_map(|_| r.judge(&t, Sides::Both, 0.0, 30.0, None))
            .map(|s| s.what)
            .collect();
        assert_eq!(opened, vec![Change::Level]);
    }

    /// A day of 5-minute values from `day` (days since 1970): 10 at night,
    /// 60 from 08:00 to 18:00, a small wiggle.
    fn clinic_day(day: u64) -> Vec<(u64, f64)> {
        (0..288u64)
            .map(|i| {
                let t = day * 86_400_000 + i * 300_000;
                let hour = i / 12;
                let v = if (8..18).contains(&hour) { 60.0 } else { 10.0 };
                (t, v + (i % 7) as f64 * 0.3)
            })
            .collect()
    }

    #[test]
    fn a_night_value_at_noon_is_off_the_daily_pattern() {
        let t = ChangeTuning::default();
        let mut r = Recent::default();
        let start = 19_723; // Monday 2024-01-01
        for day in start..start + 5 {
            for (at, v) in clinic_day(day) {
                r.push(&t, v, Some(at));
            }
        }
        // Another ordinary day raises nothing...
        for (at, v) in clinic_day(start + 5) {
            assert_eq!(r.judge(&t, Sides::Both, 0.0, v, Some(at)), None, "at {at}");
        }
        // ...but the night's level at noon, inside every range the values
        // and means had, is off the pattern.
        let noon = (start + 6) * 86_400_000 + 12 * 3_600_000;
        for (at, v) in clinic_day(start + 6) {
            let v = if at >= noon && at < noon + 3_600_000 {
                10.0
            } else {
                v
            };
            if let Some(seen) = r.judge(&t, Sides::Both, 0.0, v, Some(at)) {
                assert_eq!(seen.what, Change::Daily, "{seen:?}");
                assert_eq!(at, noon, "raised at once");
                assert!(seen.expected.0 > 40.0, "{seen:?}");
                return;
            }
        }
        panic!("the missing day load was not raised");
    }

    #[test]
    fn the_state_is_bounded() {
        let t = ChangeTuning::default();
        let mut r = Recent::default();
        for i in 0..200_000u64 {
            let v = noise(i as usize) + (i / 5000) as f64;
            r.judge(&t, Sides::Both, 0.0, v, Some(i * 60_000));
        }
        assert_eq!(r.sorted.len(), t.history);
        assert!(r.blocks.len() <= t.blocks);
        assert!(r.short.len() <= t.short);
        assert!(r.heap_bytes() <= 8 * 1024, "{} bytes", r.heap_bytes());
        // The state survives the store's JSON, empty ranges included, and
        // judges the next values exactly as before.
        let mut back: Recent =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        for i in 0..5000u64 {
            let (at, v) = (
                Some((200_000 + i) * 60_000),
                40.0 + noise(i as usize) * (i % 3) as f64,
            );
            assert_eq!(
                back.judge(&t, Sides::Both, 0.0, v, at),
                r.judge(&t, Sides::Both, 0.0, v, at)
            );
        }
        assert_eq!(
            serde_json::to_string(&Recent::default()).ok(),
            serde_json::to_string(
                &serde_json::from_str::<Recent>(
                    &serde_json::to_string(&Recent::default()).expect("json")
                )
                .expect("parse")
            )
            .ok()
        );
        // High-side metrics ignore drops.
        let mut r = primed(&t);
        assert_eq!(r.judge(&t, Sides::High, 0.0, -100.0, None), None);
    }

    #[test]
    fn unarmed_until_enough_history_and_floors_apply() {
        let t = ChangeTuning::default();
        let mut r = Recent::default();
        for i in 0..t.arm_after {
            let wild = noise(i) * 100.0 * (i % 2) as f64;
            assert_eq!(r.judge(&t, Sides::Both, 0.0, wild, None), None);
        }
        let mut r = primed(&t);
        // A floor of 100 makes a jump of 30 ordinary.
        assert_eq!(r.judge(&t, Sides::Both, 100.0, 50.0, None), None);
        assert_eq!(r.judge(&t, Sides::Both, 0.0, f64::NAN, None), None);
        assert!(ChangeTuning::default().validate().is_ok());
        let bad = ChangeTuning {
            short: 1,
            ..ChangeTuning::default()
        };
        assert!(bad.validate().is_err());
    }
}
