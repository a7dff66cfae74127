//! A device's baseline and the detectors that hold the device to it.
//! Lifecycle: `baselining` (from enrollment for the configured period, or
//! until closed) -> `review` (learned, waiting for a person) ->
//! `monitoring` (approved, then fixed: DESIGN principle 7). What is learned:
//! a `detect::Profile` per metric (from the samples archived during the
//! baseline, at close), the listening sockets, outbound and inbound
//! endpoints with their processes, the kernel and manifest versions, and
//! the reboot cadence. Rule-based detectors that need no profile (lateral
//! movement, Internet inbound, cleartext services) run in every phase.
//! Pure: bodies in, `Raise`s out; `store` keeps it, as JSON.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vigil_protocol::body::{Addr, Change, Hello, Proto, SocketKind, Sockets};
use vigil_protocol::sample::Sample;

use crate::alert::{self, rfc3339, Raise, Rule};
use crate::config::Policy;
use crate::detect::metric::{self, Kind};
use crate::detect::recent::Change as Found;
use crate::detect::score::{
    Band, Confidence, Learner, Ongoing, Profile, Sides, Tuning, Watch, CONFIDENT_SAMPLES,
    LOW_CONFIDENCE_WIDEN,
};
use crate::store::Layout;

/// Ports whose use towards another internal host is lateral movement:
/// SSH, MS-RPC, NetBIOS session, SMB, RDP, WinRM over HTTP and HTTPS.
pub const LATERAL_PORTS: &[(u16, &str)] = &[
    (22, "SSH"),
    (135, "MS-RPC"),
    (139, "NetBIOS/SMB"),
    (445, "SMB"),
    (3389, "RDP"),
    (5985, "WinRM"),
    (5986, "WinRM over TLS"),
];

/// Cleartext services a hardened device must not offer.
pub const INSECURE_PORTS: &[(Proto, u16, &str)] = &[
    (Proto::Tcp, 21, "FTP"),
    (Proto::Tcp, 23, "telnet"),
    (Proto::Tcp, 80, "plain HTTP"),
    (Proto::Udp, 69, "TFTP"),
    (Proto::Tcp, 512, "rexec"),
    (Proto::Tcp, 513, "rlogin"),
    (Proto::Tcp, 514, "rsh"),
];

/// Outbound endpoints remembered for an egress alert's evidence.
const RECENT_OUTBOUND: usize = 16;
/// How far back they count as "recent", ms.
/// Destinations named in an egress alert: seen this close to its bytes.
const EPISODE_MS: u64 = 120_000;
/// At most this many destinations in an egress alert.
const MAX_DESTINATIONS: usize = 10;
const DESTINATION_ORDER: &str = "each destination once: those the approved baseline never used first, then the most recently seen; within 2 minutes of the bytes";

/// `list` (newest first, each once) with the destinations the baseline
/// never used first, at most `MAX_DESTINATIONS`.
fn rank(learned: &BTreeMap<String, BTreeSet<String>>, list: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut list: Vec<String> = list
        .into_iter()
        .filter(|d| seen.insert(d.clone()))
        .collect();
    list.sort_by_key(|d| learned.contains_key(d));
    list.truncate(MAX_DESTINATIONS);
    list
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Baselining,
    Review,
    Monitoring,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Baselining => "baselining",
            Phase::Review => "review",
            Phase::Monitoring => "monitoring",
        }
    }
}

/// What a baseline learned: the part a person reviews, approves, and can
/// share with every device of the same model (`export` / `import`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    /// Device time of the first and last sample learned from.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Metric key (`cpu.busy`, `net.eth0.tx_bytes`, ...) -> profile.
    pub metrics: BTreeMap<String, Profile>,
    /// `tcp/22` -> processes seen listening there.
    pub listeners: BTreeMap<String, BTreeSet<String>>,
    /// `tcp 10.1.2.3:443` -> processes that connected there.
    pub outbound: BTreeMap<String, BTreeSet<String>>,
    /// `tcp 10.4.5.6 -> 22` -> processes that accepted.
    pub inbound: BTreeMap<String, BTreeSet<String>>,
    /// Processes that owned a socket.
    pub processes: BTreeSet<String>,
    pub kernels: BTreeSet<String>,
    /// `firmware vendor/scope` -> version.
    pub manifests: BTreeMap<String, u64>,
    pub reboots: u64,
    /// Shortest time between two boots seen, seconds.
    pub shortest_boot_interval_s: Option<u64>,
}

/// A device's baseline with the detectors' running state, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub phase: Phase,
    pub started_ms: u64,
    pub closed_ms: Option<u64>,
    pub approved_ms: Option<u64>,
    /// When learning ends by itself (set by `serve` from its configuration).
    #[serde(default)]
    pub closes_ms: Option<u64>,
    /// `learned on this device`, or the model whose fleet baseline it uses.
    pub source: String,
    pub learned: Learned,
    /// Per-metric detector state in monitoring.
    #[serde(default)]
    watches: BTreeMap<String, Watch>,
    #[serde(default)]
    last_boot_time_s: Option<u64>,
    #[serde(default)]
    recent_outbound: VecDeque<(u64, String)>,
    /// Open egress alerts (metric key -> evidence): a destination that
    /// shows up in the socket table after the bytes is added to them.
    #[serde(default)]
    egress_open: BTreeMap<String, Value>,
    /// Lateral connections by port: the hosts of the current sweep.
    #[serde(default)]
    sweeps: BTreeMap<u16, Sweep>,
}

/// The internal hosts one port was tried on, while the tries continue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sweep {
    last_ms: u64,
    targets: Vec<String>,
}

/// Lateral tries this close together are one sweep.
const SWEEP_MS: u64 = 600_000;
const MAX_SWEEP_TARGETS: usize = 256;

/// The document `baseline export` writes and `baseline import` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exported {
    pub format: String,
    pub device: String,
    pub name: String,
    pub model: String,
    pub approved: Option<String>,
    pub learned: Learned,
}

pub const EXPORT_FORMAT: &str = "vigil-baseline/1";

/// Everything the detectors need to know besides the frame.
pub struct Context<'a> {
    pub device: &'a str,
    pub policy: &'a Policy,
    pub tuning: &'a Tuning,
    /// When the frame arrived (alert time).
    pub now_ms: u64,
}

/// Learns the metric profiles from archived samples, in time order.
#[derive(Default)]
pub struct MetricLearning {
    learners: BTreeMap<String, (Kind, Learner)>,
    first_ms: Option<u64>,
    last_ms: u64,
}

impl MetricLearning {
    pub fn add(&mut self, s: &Sample, layout: &Layout, t: &Tuning) {
        self.first_ms.get_or_insert(s.time_ms);
        self.last_ms = self.last_ms.max(s.time_ms);
        for r in metric::readings(s, layout) {
            self.learners
                .entry(r.key)
                .or_insert_with(|| (r.kind, Learner::new(t)))
                .1
                .learn_at(r.value, Some(s.time_ms));
        }
    }

    /// Profiles for every metric with enough samples, and the detectors
    /// primed with the last rolling window.
    fn finish(self) -> (BTreeMap<String, Profile>, BTreeMap<String, Watch>, u64, u64) {
        let mut profiles = BTreeMap::new();
        let mut watches = BTreeMap::new();
        for (key, (kind, l)) in self.learners {
            if let Some(p) = l.profile(kind.floor_for(l.max())) {
                watches.insert(key.clone(), Watch::after(Some(&l)));
                profiles.insert(key, p);
            }
        }
        (profiles, watches, self.first_ms.unwrap_or(0), self.last_ms)
    }
}

/// The values beyond which one sample opens a deviation: (below, above).
/// No lower limit where it could not be reached (a non-negative metric,
/// or one that only counts when it rises).
pub fn limits(p: &Band, t: &Tuning, sides: Sides) -> (Option<f64>, f64) {
    let lo = p.min - t.spike * p.scale;
    let hi = p.max + t.spike * p.scale;
    let reachable = sides == Sides::Both && !(lo < 0.0 && p.min >= 0.0);
    (reachable.then_some(lo), hi)
}

/// The kind of a metric key, e.g. `net.eth0.tx_bytes` -> `NetTxBytes`.
pub fn kind_of(key: &str) -> Kind {
    if let Some(rest) = key.strip_prefix("net.") {
        if let Some((_, field)) = rest.rsplit_once('.') {
            return Kind::from_name(&format!("net.{field}")).unwrap_or(Kind::Value);
        }
    }
    Kind::from_name(key).unwrap_or(Kind::Value)
}

fn ip(a: &Addr) -> IpAddr {
    match *a {
        Addr::V4(b) => IpAddr::from(b),
        Addr::V6(b) => IpAddr::from(b),
    }
}

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

/// A number as people read it: integers without decimals, others to 3
/// significant places.
pub fn num(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

impl Baseline {
    pub fn new(started_ms: u64) -> Baseline {
        Baseline {
            phase: Phase::Baselining,
            started_ms,
            closed_ms: None,
            approved_ms: None,
            closes_ms: None,
            source: "learned on this device".into(),
            learned: Learned::default(),
            watches: BTreeMap::new(),
            last_boot_time_s: None,
            recent_outbound: VecDeque::new(),
            egress_open: BTreeMap::new(),
            sweeps: BTreeMap::new(),
        }
    }

    /// From a stored row; an empty body is a baseline that just started.
    pub fn from_row(row: &crate::store::BaselineRow) -> Result<Baseline, String> {
        if row.body.is_empty() {
            return Ok(Baseline::new(row.started_ms));
        }
        serde_json::from_str(&row.body).map_err(|e| format!("stored baseline does not parse: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Ends learning: the profiles come from `learning` (the archived
    /// samples since `started_ms`), the sets from what was seen.
    pub fn close(&mut self, learning: MetricLearning, now_ms: u64) {
        let (profiles, watches, from, to) = learning.finish();
        self.learned.metrics = profiles;
        self.learned.from_ms = from;
        self.learned.to_ms = to;
        self.watches = watches;
        self.phase = Phase::Review;
        self.closed_ms = Some(now_ms);
        self.closes_ms = None;
    }

    pub fn approve(&mut self, now_ms: u64) {
        self.phase = Phase::Monitoring;
        self.approved_ms = Some(now_ms);
    }

    /// Monitoring against a fleet baseline shared by `model`.
    pub fn adopt(&mut self, learned: Learned, model: &str, now_ms: u64) {
        self.learned = learned;
        self.watches.clear();
        self.phase = Phase::Monitoring;
        self.closed_ms.get_or_insert(now_ms);
        self.approved_ms = Some(now_ms);
        self.source = format!("fleet baseline of model {model}");
    }

    /// Whether the baseline period is over and it should close.
    pub fn due(&self, period_ms: u64, now_ms: u64) -> bool {
        self.phase == Phase::Baselining && now_ms >= self.started_ms.saturating_add(period_ms)
    }

    /// Records when learning ends under `period_ms`; true if that changed.
    pub fn schedule(&mut self, period_ms: u64) -> bool {
        let at =
            (self.phase == Phase::Baselining).then(|| self.started_ms.saturating_add(period_ms));
        let changed = at != self.closes_ms;
        self.closes_ms = at;
        changed
    }

    /// A batch of samples. Learning happens at close from the archive;
    /// here only the monitoring detectors run. Returns the alerts and
    /// whether an alarm opened (state worth saving at once).
    pub fn samples(
        &mut self,
        cx: &Context<'_>,
        samples: &[Sample],
        layout: &Layout,
    ) -> (Vec<Raise>, bool) {
        let mut out = Vec::new();
        if self.phase != Phase::Monitoring {
            return (out, false);
        }
        let mut opened = false;
        for s in samples {
            for r in metric::readings(s, layout) {
                let Some(p) = self.learned.metrics.get(&r.key) else {
                    continue;
                };
                if !cx.policy.watched(&r.key) {
                    continue;
                }
                // No key copy once the metric has its detector.
                if !self.watches.contains_key(&r.key) {
                    self.watches.insert(r.key.clone(), Watch::default());
                }
                let Some(w) = self.watches.get_mut(&r.key) else {
                    continue;
                };
                let was = (w.deviation.open, w.shift.open);
                let v = w.score(p, cx.tuning, r.kind.sides(), r.value, Some(s.time_ms));
                opened |= was != (w.deviation.open, w.shift.open) || v.ongoing.is_some();
                let w_state = (
                    (w.deviation.hits, w.deviation.peak),
                    (w.shift.hits, w.shift.peak),
                );
                if !v.anomaly() && v.ongoing.is_none() {
                    continue;
                }
                let egress = r.kind.sides() == Sides::High;
                let unit = r.kind.unit();
                let mut ev = json!({
                    "metric": r.key, "unit": unit,
                    "sample_time": rfc3339(s.time_ms), "sample_time_ms": s.time_ms,
                    "baseline": {"samples": p.samples, "min": p.min, "median": p.median, "max": p.max,
                                 "spread_p01_p99": p.scale},
                });
                let round = |x: f64| (x * 1000.0).round() / 1000.0;
                // The hour's ranges where the baseline had a daily cycle.
                let band = p.band(Some(s.time_ms));
                let hourly = if p.seasons.is_some() {
                    ev["hour_of_day"] =
                        json!({"min": band.min, "max": band.max, "spread": band.scale});
                    " at this hour of the day"
                } else {
                    ""
                };
                let (dev, shift) = (
                    v.deviation || v.ongoing == Some(Ongoing::Deviation),
                    v.shift || v.ongoing == Some(Ongoing::Shift),
                );
                if v.ongoing.is_some() {
                    let a = if dev { &w_state.0 } else { &w_state.1 };
                    ev["episode"] =
                        json!({"values_out_of_range": a.0, "peak_excess_in_spreads": round(a.1)});
                }
                let rule = if dev {
                    ev["detector"] = json!("baseline: one value far outside the approved range");
                    ev["excess_in_spreads"] = json!(round(v.excess));
                    ev["expected"] = match limits(&band, cx.tuning, r.kind.sides()) {
                        (None, hi) => json!(format!(
                            "at most {} {unit}{hourly} (baseline max {})",
                            num(hi),
                            num(band.max)
                        )),
                        (Some(lo), hi) => json!(format!(
                            "between {} and {} {unit}{hourly} (baseline min {}, max {})",
                            num(lo),
                            num(hi),
                            num(band.min),
                            num(band.max)
                        )),
                    };
                    ev["seen"] = json!(format!("{} = {} {unit}", r.key, num(r.value)));
                    if egress {
                        alert::EGRESS_VOLUME
                    } else {
                        alert::METRIC_DEVIATION
                    }
                } else if shift {
                    ev["detector"] =
                        json!("baseline: the rolling mean outside the approved rolling means");
                    ev["excess_in_spreads"] = json!(round(v.shift_excess));
                    ev["expected"] = json!(format!(
                        "a {}-sample mean between {} and {} {unit}{hourly}",
                        p.shift_window,
                        num(band.mean_min),
                        num(band.mean_max)
                    ));
                    ev["seen"] = json!(format!(
                        "{} averaged {} {unit} over {} samples",
                        r.key,
                        num(v.rolling_mean),
                        p.shift_window
                    ));
                    if egress {
                        alert::EGRESS_VOLUME
                    } else {
                        alert::METRIC_SHIFT
                    }
                } else if let Some(c) = v.change {
                    let t = &cx.tuning.change;
                    ev["detector"] = json!(format!(
                        "change: {} against the device's own last {} samples (inside what the approved baseline allows)",
                        c.what.name(),
                        c.history
                    ));
                    ev["excess_in_spreads"] = json!(round(c.excess));
                    let (lo, hi) = (num(c.expected.0), num(c.expected.1));
                    let (expected, seen) = match c.what {
                        Found::Extreme => (
                            format!("between {lo} and {hi} {unit}, as in the last {} samples", c.history),
                            format!("{} = {} {unit}", r.key, num(c.seen)),
                        ),
                        Found::Level => (
                            format!("a {}-sample mean between {lo} and {hi} {unit}, as in the last {} samples", t.short, c.history),
                            format!("{} averaged {} {unit} over the last {} samples", r.key, num(c.seen), t.short),
                        ),
                        Found::Daily | Found::Weekly => (
                            format!("between {lo} and {hi} {unit} at this time of {}, from the {} before",
                                if c.what == Found::Daily { "day" } else { "week" },
                                if c.what == Found::Daily { "days" } else { "weeks" }),
                            format!("{} = {} {unit}", r.key, num(c.seen)),
                        ),
                    };
                    ev["expected"] = json!(expected);
                    ev["seen"] = json!(seen);
                    alert::METRIC_CHANGE
                } else {
                    continue;
                };
                if egress {
                    // An update keeps the destinations its episode named.
                    let dest = match (v.ongoing, self.egress_open.get(&r.key)) {
                        (Some(_), Some(open)) => open["recent_outbound"].clone(),
                        _ => json!(self.destinations(s.time_ms)),
                    };
                    ev["recent_outbound"] = dest;
                    ev["recent_outbound_order"] = json!(DESTINATION_ORDER);
                }
                if egress {
                    self.egress_open.insert(r.key.clone(), ev.clone());
                }
                out.push(Raise::new(rule, cx.device, r.key.clone(), ev, cx.now_ms));
            }
        }
        let watches = &self.watches;
        self.egress_open.retain(|k, _| {
            watches
                .get(k)
                .is_some_and(|w| w.deviation.open || w.shift.open)
        });
        (out, opened)
    }

    /// The destinations seen within `EPISODE_MS` before `t`, ranked.
    fn destinations(&self, t: u64) -> Vec<String> {
        let since = t.saturating_sub(EPISODE_MS);
        let newest_first: Vec<String> = self
            .recent_outbound
            .iter()
            .rev()
            .filter(|(at, _)| *at >= since && *at <= t.saturating_add(EPISODE_MS))
            .map(|(_, e)| e.clone())
            .collect();
        rank(&self.learned.outbound, newest_first)
    }

    /// Socket-table changes. Returns the alerts and whether the learned
    /// sets changed.
    pub fn sockets(
        &mut self,
        cx: &Context<'_>,
        s: &Sockets,
        frame_time_ms: u64,
    ) -> (Vec<Raise>, bool) {
        let mut out = Vec::new();
        let mut named = Vec::new();
        let mut changed = false;
        let learning = self.phase == Phase::Baselining;
        let monitoring = self.phase == Phase::Monitoring;
        let at = json!(rfc3339(frame_time_ms));
        for c in s.changes.iter().filter(|c| c.change == Change::Added) {
            let process = c.process.as_str().to_string();
            let who = if process.is_empty() {
                "an unidentified process".to_string()
            } else {
                format!("process {process}")
            };
            let new_process =
                monitoring && !process.is_empty() && !self.learned.processes.contains(&process);
            if learning && !process.is_empty() {
                changed |= self.learned.processes.insert(process.clone());
            }
            let mut raise = |rule: Rule, dedup: String, mut ev: Value| {
                ev["process"] = json!(process);
                ev["uid"] = json!(c.uid);
                ev["seen_at"] = at.clone();
                ev["seen_at_ms"] = json!(frame_time_ms);
                if new_process {
                    ev["new_process"] = json!(true);
                }
                out.push(Raise::new(rule, cx.device, dedup, ev, cx.now_ms));
            };
            let local = ip(&c.local.addr);
            match c.kind {
                SocketKind::Listen => {
                    let key = format!("{}/{}", proto(c.proto), c.local.port);
                    if let Some((_, _, name)) = INSECURE_PORTS
                        .iter()
                        .find(|(p, port, _)| *p == c.proto && *port == c.local.port)
                    {
                        raise(
                            alert::INSECURE_SERVICE,
                            key.clone(),
                            json!({"listener": key, "address": endpoint(local, c.local.port), "service": name,
                                   "expected": "no cleartext services (telnet, FTP, plain HTTP, TFTP, r-services)",
                                   "seen": format!("{name} listening on {} ({who})", endpoint(local, c.local.port))}),
                        );
                    }
                    if learning {
                        changed |= self
                            .learned
                            .listeners
                            .entry(key.clone())
                            .or_default()
                            .insert(process.clone());
                    } else if monitoring && !self.learned.listeners.contains_key(&key) {
                        let known: Vec<&String> = self.learned.listeners.keys().collect();
                        raise(
                            alert::NEW_LISTENER,
                            key.clone(),
                            json!({"listener": key, "address": endpoint(local, c.local.port),
                                   "expected": format!("only the baseline's listeners: {}", join(&known)),
                                   "seen": format!("a new listener {key} ({who})")}),
                        );
                    }
                }
                SocketKind::Outbound => {
                    let Some(r) = c.remote else { continue };
                    let peer = ip(&r.addr);
                    if peer.is_loopback() {
                        continue;
                    }
                    let key = format!("{} {}", proto(c.proto), endpoint(peer, r.port));
                    self.recent_outbound.push_back((frame_time_ms, key.clone()));
                    while self.recent_outbound.len() > RECENT_OUTBOUND {
                        self.recent_outbound.pop_front();
                    }
                    // Bytes first, socket table after: name the destination
                    // in the egress alert it belongs to.
                    for (metric, ev) in self.egress_open.iter_mut() {
                        let t = ev["sample_time_ms"].as_u64().unwrap_or(0);
                        let listed = ev["recent_outbound"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|e| *e == key));
                        if frame_time_ms.saturating_add(EPISODE_MS) < t
                            || frame_time_ms > t.saturating_add(EPISODE_MS)
                            || listed
                        {
                            continue;
                        }
                        let mut list: Vec<String> = ev["recent_outbound"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e.as_str().map(str::to_string))
                            .collect();
                        // The newest first among its kind, then ranked.
                        list.insert(0, key.clone());
                        ev["recent_outbound"] = json!(rank(&self.learned.outbound, list));
                        named.push(Raise::new(
                            alert::EGRESS_VOLUME,
                            cx.device,
                            metric.clone(),
                            ev.clone(),
                            cx.now_ms,
                        ));
                    }
                    let mut lateral = false;
                    if cx.policy.is_internal(peer) {
                        if let Some((_, service)) = LATERAL_PORTS.iter().find(|(p, _)| *p == r.port)
                        {
                            if !cx
                                .policy
                                .allow_lateral
                                .iter()
                                .any(|a| a.allows(peer, r.port))
                            {
                                lateral = true;
                                // A sweep (many hosts, one port) is one alert
                                // listing its targets.
                                let sweep = self.sweeps.entry(r.port).or_default();
                                if sweep.last_ms.saturating_add(SWEEP_MS) < frame_time_ms {
                                    sweep.targets.clear();
                                }
                                sweep.last_ms = sweep.last_ms.max(frame_time_ms);
                                let target = peer.to_string();
                                if !sweep.targets.contains(&target)
                                    && sweep.targets.len() < MAX_SWEEP_TARGETS
                                {
                                    sweep.targets.push(target);
                                }
                                let n = sweep.targets.len();
                                let seen = if n > 1 {
                                    format!(
                                        "{who} connected to {n} internal hosts on {service} (port {}) within {} minutes: {}",
                                        r.port,
                                        SWEEP_MS / 60_000,
                                        sweep.targets.join(", ")
                                    )
                                } else {
                                    format!(
                                        "{who} connected to {} ({service})",
                                        endpoint(peer, r.port)
                                    )
                                };
                                raise(
                                    alert::LATERAL_MOVEMENT,
                                    format!("{} port {}", proto(c.proto), r.port),
                                    json!({"remote": endpoint(peer, r.port), "service": service,
                                           "targets": sweep.targets, "hosts": n,
                                           "expected": format!("no {service} from the device to other internal hosts (detect.allow_lateral lists exceptions)"),
                                           "seen": seen}),
                                );
                            }
                        }
                    }
                    if learning {
                        changed |= self
                            .learned
                            .outbound
                            .entry(key)
                            .or_default()
                            .insert(process.clone());
                    } else if monitoring
                        && !lateral
                        && !self.learned.outbound.contains_key(&key)
                        && !cx
                            .policy
                            .allow_outbound
                            .iter()
                            .any(|a| a.allows(peer, r.port))
                    {
                        raise(
                            alert::NEW_OUTBOUND,
                            key.clone(),
                            json!({"remote": endpoint(peer, r.port), "internal": cx.policy.is_internal(peer),
                                   "expected": format!("one of the baseline's {} outbound endpoints or detect.allow_outbound", self.learned.outbound.len()),
                                   "seen": format!("{who} connected to {}", endpoint(peer, r.port))}),
                        );
                    }
                }
                SocketKind::Inbound => {
                    let Some(r) = c.remote else { continue };
                    let peer = ip(&r.addr);
                    if peer.is_loopback() {
                        continue;
                    }
                    if !cx.policy.is_internal(peer) {
                        raise(
                            alert::INTERNET_INBOUND,
                            peer.to_string(),
                            json!({"remote": endpoint(peer, r.port), "local_port": c.local.port,
                                   "expected": "inbound connections only from the hospital's networks (detect.internal_prefixes)",
                                   "seen": format!("{} connected to port {} ({who})", peer, c.local.port)}),
                        );
                    }
                    if learning {
                        let key = format!("{} {} -> {}", proto(c.proto), peer, c.local.port);
                        changed |= self
                            .learned
                            .inbound
                            .entry(key)
                            .or_default()
                            .insert(process.clone());
                    }
                }
            }
        }
        out.append(&mut named);
        (out, changed)
    }

    /// An inventory frame; `rebooted` when its kernel boot id is new.
    /// Returns the alerts and whether the learned sets changed.
    pub fn hello(&mut self, cx: &Context<'_>, h: &Hello, rebooted: bool) -> (Vec<Raise>, bool) {
        let mut out = Vec::new();
        let mut changed = false;
        let learning = self.phase == Phase::Baselining;
        let monitoring = self.phase == Phase::Monitoring;
        let kernel = h.kernel_release.as_str().to_string();
        if learning {
            changed |= self.learned.kernels.insert(kernel.clone());
        } else if monitoring
            && !self.learned.kernels.is_empty()
            && !self.learned.kernels.contains(&kernel)
        {
            let known: Vec<&String> = self.learned.kernels.iter().collect();
            out.push(Raise::new(
                alert::KERNEL_CHANGED,
                cx.device,
                kernel.clone(),
                json!({"expected": format!("kernel {}", join(&known)), "seen": format!("kernel {kernel}")}),
                cx.now_ms,
            ));
        }
        for m in &h.manifests {
            let key = format!("{} {}/{}", m.class.name(), m.issuer, m.scope);
            if learning {
                let v = self.learned.manifests.entry(key).or_insert(m.version);
                if *v != m.version {
                    *v = (*v).max(m.version);
                }
                changed = true;
            } else if monitoring {
                let expected = self.learned.manifests.get(&key).copied();
                if expected != Some(m.version) {
                    out.push(Raise::new(
                        alert::MANIFEST_CHANGED,
                        cx.device,
                        format!("{key}@{}", m.version),
                        json!({"manifest": key,
                               "expected": expected.map_or_else(|| "no such manifest".to_string(), |v| format!("version {v}")),
                               "seen": format!("version {}", m.version)}),
                        cx.now_ms,
                    ));
                }
            }
        }
        if rebooted {
            if let Some(prev) = self.last_boot_time_s {
                let interval = h.boot_time_s.saturating_sub(prev);
                if learning {
                    self.learned.reboots += 1;
                    let s = self
                        .learned
                        .shortest_boot_interval_s
                        .get_or_insert(interval);
                    *s = (*s).min(interval);
                    changed = true;
                } else if monitoring {
                    let expected = match self.learned.shortest_boot_interval_s {
                        None => Some("no reboot (none during the baseline)".to_string()),
                        Some(s) if interval < s / 2 => Some(format!(
                            "at least {} s between boots (baseline's shortest {} s)",
                            s / 2,
                            s
                        )),
                        Some(_) => None,
                    };
                    if let Some(expected) = expected {
                        out.push(Raise::new(
                            alert::UNEXPECTED_REBOOT,
                            cx.device,
                            format!("{}", h.boot_time_s),
                            json!({"expected": expected,
                                   "seen": format!("a reboot {interval} s after the previous boot"),
                                   "boot_time": rfc3339(h.boot_time_s.saturating_mul(1000))}),
                            cx.now_ms,
                        ));
                    }
                }
            }
        }
        if self.last_boot_time_s != Some(h.boot_time_s) {
            self.last_boot_time_s = Some(h.boot_time_s);
            changed = true;
        }
        (out, changed)
    }

    /// What `baseline show --json` prints.
    pub fn summary(&self, policy: &Policy, tuning: &Tuning) -> Value {
        let period_ms = policy.baseline_period_ms;
        let metrics: Vec<Value> = self
            .learned
            .metrics
            .iter()
            .map(|(k, p)| {
                let kind = kind_of(k);
                let (lo, hi) = limits(&p.band(None), tuning, kind.sides());
                let cycle = p.seasons.as_ref().map(|s| {
                    if s.weekend_split {
                        "hourly, weekends apart"
                    } else {
                        "hourly"
                    }
                });
                let notes = review_notes(k, p, lo, hi, kind);
                json!({"metric": k, "unit": kind.unit(), "samples": p.samples,
                       "min": p.min, "p01": p.p01, "median": p.median, "p99": p.p99, "max": p.max,
                       "alert_below": lo, "alert_above": hi,
                       "confidence": p.confidence.name(), "notes": notes,
                       "mean_min": p.mean_min, "mean_max": p.mean_max, "mean_window": p.shift_window,
                       "daily_cycle": cycle, "seasons": p.seasons,
                       "alerted": policy.watched(k)})
            })
            .collect();
        let sets = |m: &BTreeMap<String, BTreeSet<String>>| -> Vec<Value> {
            m.iter()
                .map(|(k, ps)| json!({"endpoint": k, "processes": ps}))
                .collect()
        };
        json!({
            "phase": self.phase.name(),
            "source": self.source,
            "started": rfc3339(self.started_ms),
            "closes": (self.phase == Phase::Baselining)
                .then(|| rfc3339(self.closes_ms.unwrap_or(self.started_ms.saturating_add(period_ms)))),
            "closed": self.closed_ms.map(rfc3339),
            "approved": self.approved_ms.map(rfc3339),
            "learned_from": (self.learned.from_ms > 0).then(|| rfc3339(self.learned.from_ms)),
            "learned_to": (self.learned.to_ms > 0).then(|| rfc3339(self.learned.to_ms)),
            "metrics": metrics,
            "listeners": sets(&self.learned.listeners),
            "outbound": sets(&self.learned.outbound),
            "inbound": sets(&self.learned.inbound),
            "processes": self.learned.processes,
            "kernels": self.learned.kernels,
            "manifests": self.learned.manifests,
            "reboots": self.learned.reboots,
            "shortest_boot_interval_s": self.learned.shortest_boot_interval_s,
            "open_alarms": self.watches.iter()
                .filter(|(_, w)| w.deviation.open || w.shift.open)
                .map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        })
    }
}

/// What a reviewer must know about one learned metric before approving:
/// a profile learned from too few samples, a limit the metric can never
/// reach.
pub fn review_notes(key: &str, p: &Profile, lo: Option<f64>, hi: f64, kind: Kind) -> Vec<String> {
    let mut out = Vec::new();
    if p.confidence == Confidence::Low {
        out.push(format!(
            "{key}: low confidence: learned from {} samples (fewer than {CONFIDENT_SAMPLES}), so its limits are held {LOW_CONFIDENCE_WIDEN} times as wide; learn longer for tighter ones",
            p.samples
        ));
    }
    if let Some(top) = kind.ceiling() {
        if hi > top {
            out.push(format!(
                "{key}: the upper limit {} {} is above the most the metric can reach ({}): a rise cannot alert (learned under load? learn again under normal use)",
                num(hi),
                kind.unit(),
                num(top)
            ));
        }
        if lo.is_none() && hi > top && kind.sides() == Sides::Both {
            out.push(format!(
                "{key}: with no reachable lower limit either, only a sustained shift or a change against its own recent past can alert on it"
            ));
        }
    }
    out
}

fn join(items: &[&String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Detect;
    use vigil_protocol::body::{Endpoint, SocketChange};
    use vigil_protocol::sample::CpuTicks;

    fn context<'a>(policy: &'a Policy, tuning: &'a Tuning) -> Context<'a> {
        Context {
            device: "d",
            policy,
            tuning,
            now_ms: 1,
        }
    }

    fn policy() -> Policy {
        let d = Detect {
            allow_lateral: vec!["10.9.9.9:22".into()],
            allow_outbound: vec!["192.0.2.0/24:443".into()],
            ..Detect::default()
        };
        d.policy().expect("valid")
    }

    fn change(
        kind: SocketKind,
        local: ([u8; 4], u16),
        remote: Option<([u8; 4], u16)>,
    ) -> SocketChange {
        SocketChange {
            change: Change::Added,
            kind,
            proto: Proto::Tcp,
            local: Endpoint {
                addr: Addr::V4(local.0),
                port: local.1,
            },
            remote: remote.map(|(a, p)| Endpoint {
                addr: Addr::V4(a),
                port: p,
            }),
            uid: 0,
            process: "svc".try_into().expect("short"),
        }
    }

    fn sockets(changes: Vec<SocketChange>) -> Sockets {
        let mut s = Sockets {
            snapshot: false,
            changes: heapless::Vec::new(),
        };
        for c in changes {
            s.changes.push(c).expect("room");
        }
        s
    }

    fn rules(r: &[Raise]) -> Vec<&'static str> {
        r.iter().map(|r| r.rule.id).collect()
    }

    #[test]
    fn rule_based_detectors_run_while_baselining_and_new_sockets_only_after_approval() {
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let dev = [10, 0, 0, 2];
        let mut b = Baseline::new(0);
        let benign = sockets(vec![
            change(SocketKind::Listen, (dev, 104), None),
            change(
                SocketKind::Outbound,
                (dev, 40000),
                Some(([10, 0, 0, 1], 7443)),
            ),
            change(
                SocketKind::Inbound,
                (dev, 104),
                Some(([10, 0, 5, 5], 50000)),
            ),
        ]);
        let (r, changed) = b.sockets(&cx, &benign, 1000);
        assert!(r.is_empty() && changed, "{:?}", rules(&r));
        let attack = sockets(vec![
            change(
                SocketKind::Outbound,
                (dev, 40001),
                Some(([10, 0, 7, 7], 445)),
            ),
            change(
                SocketKind::Outbound,
                (dev, 40002),
                Some(([10, 9, 9, 9], 22)),
            ),
            change(
                SocketKind::Inbound,
                (dev, 104),
                Some(([203, 0, 113, 10], 50001)),
            ),
            change(SocketKind::Listen, (dev, 23), None),
        ]);
        let (r, _) = b.sockets(&cx, &attack, 2000);
        assert_eq!(
            rules(&r),
            [
                alert::LATERAL_MOVEMENT.id,
                alert::INTERNET_INBOUND.id,
                alert::INSECURE_SERVICE.id
            ],
            "the allowed jump host is not lateral movement"
        );
        b.close(MetricLearning::default(), 3000);
        b.approve(4000);
        let (r, _) = b.sockets(&cx, &benign, 5000);
        assert!(r.is_empty(), "{:?}", rules(&r));
        let new = sockets(vec![
            change(SocketKind::Listen, (dev, 8080), None),
            change(
                SocketKind::Outbound,
                (dev, 40003),
                Some(([198, 51, 100, 7], 443)),
            ),
            change(
                SocketKind::Outbound,
                (dev, 40004),
                Some(([192, 0, 2, 7], 443)),
            ),
        ]);
        let (r, _) = b.sockets(&cx, &new, 6000);
        assert_eq!(
            rules(&r),
            [alert::NEW_LISTENER.id, alert::NEW_OUTBOUND.id],
            "allow-listed endpoint passes"
        );
        assert_eq!(r[0].evidence["seen_at_ms"], 6000);
    }

    fn sample(t: u64, busy: u64, tx: u64) -> Sample {
        let mut s = Sample {
            time_ms: t,
            interval_ms: 1000,
            cpu: CpuTicks {
                user: busy,
                idle: 200 - busy,
                ..CpuTicks::default()
            },
            ..Sample::default()
        };
        s.net
            .push(vigil_protocol::sample::NetCounters {
                iface: 0,
                tx_bytes: tx,
                ..Default::default()
            })
            .expect("room");
        s
    }

    fn eth0() -> Layout {
        Layout {
            interfaces: vec!["eth0".into()],
            disks: vec![],
        }
    }

    /// A baseline closed on 100 s of CPU at 10-14 % and `tx(i)` bytes sent.
    fn closed(t: &Tuning, layout: &Layout, tx: impl Fn(u64) -> u64) -> Baseline {
        let mut b = Baseline::new(0);
        let mut learning = MetricLearning::default();
        for i in 0..100 {
            learning.add(&sample(i * 1000, 10 + i % 5, tx(i)), layout, t);
        }
        b.close(learning, 100_000);
        b
    }

    #[test]
    fn metrics_are_learned_at_close_and_deviations_raised_once_in_monitoring() {
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let layout = eth0();
        let mut b = closed(&t, &layout, |i| 20_000 + i * 10);
        assert_eq!(b.phase, Phase::Review);
        assert_eq!(b.learned.metrics["cpu.busy"].samples, 100);
        // In review nothing is scored.
        let (r, _) = b.samples(&cx, &[sample(1, 100, 0)], &layout);
        assert!(r.is_empty());
        b.approve(100_000);
        let (r, _) = b.samples(&cx, &[sample(101_000, 7, 20_500)], &layout);
        assert!(r.is_empty(), "{:?}", rules(&r));
        let (r, opened) = b.samples(&cx, &[sample(102_000, 200, 20_500)], &layout);
        // A CPU burn: busy and user time both leave their ranges.
        assert_eq!(rules(&r), [alert::METRIC_DEVIATION.id; 2]);
        assert!(opened);
        assert_eq!(r[0].dedup, "cpu.busy");
        assert_eq!(r[1].dedup, "cpu.user");
        assert_eq!(r[0].evidence["sample_time_ms"], 102_000);
        let (r, _) = b.samples(&cx, &[sample(103_000, 200, 5_000_000)], &layout);
        assert_eq!(
            rules(&r),
            [alert::EGRESS_VOLUME.id],
            "the open CPU alarm is not raised again"
        );
        // The state survives a round trip through the store's JSON.
        let back: Baseline = serde_json::from_str(&b.to_json()).expect("round trip");
        assert_eq!(back.learned, b.learned);
        assert!(back.watches["cpu.busy"].deviation.open);
    }

    #[test]
    fn a_sweep_is_one_alert_listing_its_targets() {
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let dev = [10, 0, 0, 2];
        let mut b = Baseline::new(0);
        b.close(MetricLearning::default(), 1000);
        b.approve(2000);
        let mut raised = Vec::new();
        for host in 1..=20u8 {
            let s = sockets(vec![change(
                SocketKind::Outbound,
                (dev, 40000 + u16::from(host)),
                Some(([10, 0, 9, host], 445)),
            )]);
            let (r, _) = b.sockets(&cx, &s, 3000 + u64::from(host) * 1000);
            raised.extend(r);
        }
        // One alert (one dedup key) updated by every try, no new-outbound
        // alert beside it; the last evidence names all twenty hosts.
        assert!(
            raised.iter().all(|r| r.rule == alert::LATERAL_MOVEMENT),
            "{:?}",
            rules(&raised)
        );
        let keys: BTreeSet<&str> = raised.iter().map(|r| r.dedup.as_str()).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let last = &raised.last().expect("raised").evidence;
        assert_eq!(last["hosts"], 20);
        assert_eq!(last["targets"].as_array().map(Vec::len), Some(20));
        assert!(
            last["seen"]
                .as_str()
                .is_some_and(|s| s.contains("20 internal hosts")),
            "{last}"
        );
        // A try much later is a new sweep.
        let s = sockets(vec![change(
            SocketKind::Outbound,
            (dev, 41000),
            Some(([10, 0, 8, 1], 445)),
        )]);
        let (r, _) = b.sockets(&cx, &s, 3000 + 21_000 + SWEEP_MS + 1);
        assert_eq!(r[0].evidence["hosts"], 1);
    }

    #[test]
    fn egress_names_each_destination_once_the_new_ones_first() {
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let dev = [10, 0, 0, 2];
        let layout = eth0();
        let mut b = closed(&t, &layout, |i| 20_000 + i * 10);
        // The baseline used 10.0.0.1:7443.
        b.learned
            .outbound
            .insert("tcp 10.0.0.1:7443".into(), BTreeSet::new());
        b.approve(100_000);
        let usual = || {
            change(
                SocketKind::Outbound,
                (dev, 40000),
                Some(([10, 0, 0, 1], 7443)),
            )
        };
        // The usual destination, seen again and again before the burst.
        for i in 0..5u64 {
            b.sockets(&cx, &sockets(vec![usual()]), 101_000 + i * 1000);
        }
        let (r, _) = b.samples(&cx, &[sample(107_000, 10, 50_000_000)], &layout);
        let ev = &r
            .iter()
            .find(|r| r.rule == alert::EGRESS_VOLUME)
            .expect("egress")
            .evidence;
        assert_eq!(
            ev["recent_outbound"],
            json!(["tcp 10.0.0.1:7443"]),
            "once, not five times"
        );
        // The socket table follows the bytes: the new destination goes first.
        let new = change(
            SocketKind::Outbound,
            (dev, 40001),
            Some(([203, 0, 113, 10], 8443)),
        );
        let (r, _) = b.sockets(&cx, &sockets(vec![new, usual()]), 108_000);
        let ev = &r
            .iter()
            .find(|r| r.rule == alert::EGRESS_VOLUME)
            .expect("named")
            .evidence;
        assert_eq!(
            ev["recent_outbound"],
            json!(["tcp 203.0.113.10:8443", "tcp 10.0.0.1:7443"])
        );
    }

    #[test]
    fn an_open_alarm_updates_its_alert_while_it_lasts() {
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let layout = eth0();
        let mut b = closed(&t, &layout, |i| 20_000 + i * 10);
        b.approve(100_000);
        let mut raised = Vec::new();
        for i in 0..=2 * crate::detect::score::REPORT_EVERY {
            let (r, _) = b.samples(&cx, &[sample(101_000 + i * 1000, 200, 20_500)], &layout);
            raised.extend(r.into_iter().filter(|r| r.dedup == "cpu.busy"));
        }
        // Opened once, then updated twice with the episode's figures.
        assert_eq!(raised.len(), 3, "{:?}", rules(&raised));
        assert!(raised.iter().all(|r| r.rule == alert::METRIC_DEVIATION));
        assert!(raised[0].evidence.get("episode").is_none());
        assert_eq!(raised[2].evidence["episode"]["values_out_of_range"], 121);
    }

    #[test]
    fn review_notes_name_low_confidence_and_unreachable_limits() {
        let (p, t) = (policy(), Tuning::default());
        let layout = eth0();
        let mut b = closed(&t, &layout, |i| 20_000 + i * 10);
        // Learned under load: CPU near 100 %.
        if let Some(m) = b.learned.metrics.get_mut("cpu.busy") {
            m.max = 99.0;
            m.min = 60.0;
        }
        let s = b.summary(&p, &t);
        let cpu = s["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .find(|m| m["metric"] == "cpu.busy")
            .expect("cpu")
            .clone();
        assert_eq!(cpu["confidence"], "low", "100 samples");
        let notes: Vec<&str> = cpu["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            notes.iter().any(|n| n.contains("low confidence")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("a rise cannot alert")),
            "{notes:?}"
        );
    }

    #[test]
    fn an_unwatched_metric_is_learned_and_shown_but_never_alerted() {
        let d = Detect {
            unwatched_metrics: vec!["cpu.*".into()],
            ..Detect::default()
        };
        let (p, t) = (d.policy().expect("valid"), Tuning::default());
        let cx = context(&p, &t);
        let layout = eth0();
        let mut b = closed(&t, &layout, |_| 20_000);
        b.approve(100_000);
        let (r, _) = b.samples(&cx, &[sample(101_000, 200, 5_000_000)], &layout);
        assert_eq!(rules(&r), [alert::EGRESS_VOLUME.id], "CPU burn not alerted");
        let s = b.summary(&p, &t);
        let shown = |k: &str| {
            s["metrics"]
                .as_array()
                .expect("metrics")
                .iter()
                .find(|m| m["metric"] == k)
                .map(|m| m["alerted"].clone())
        };
        assert_eq!(shown("cpu.busy"), Some(json!(false)));
        assert_eq!(shown("net.eth0.tx_bytes"), Some(json!(true)));
    }

    #[test]
    fn kernel_manifest_and_reboot_changes_after_approval() {
        use vigil_protocol::body::{Class, ManifestVersion};
        let (p, t) = (policy(), Tuning::default());
        let cx = context(&p, &t);
        let mut h = Hello {
            public_key: [0; 32],
            agent_version: "0".try_into().expect("short"),
            hostname: "h".try_into().expect("short"),
            kernel_release: "6.1.0".try_into().expect("short"),
            os_release: "".try_into().expect("short"),
            arch: "aarch64".try_into().expect("short"),
            kernel_boot_id: [0; 16],
            boot_time_s: 1_000,
            cpus: 1,
            interfaces: heapless::Vec::new(),
            disks: heapless::Vec::new(),
            manifests: heapless::Vec::new(),
        };
        h.manifests
            .push(ManifestVersion {
                class: Class::Model,
                issuer: "acme".try_into().expect("short"),
                scope: "ecg".try_into().expect("short"),
                version: 3,
            })
            .expect("room");
        let mut b = Baseline::new(0);
        assert!(b.hello(&cx, &h, false).0.is_empty());
        h.boot_time_s = 90_000;
        assert!(b.hello(&cx, &h, true).0.is_empty());
        assert_eq!(b.learned.reboots, 1);
        b.close(MetricLearning::default(), 1);
        b.approve(1);
        h.boot_time_s = 200_000;
        assert!(
            b.hello(&cx, &h, true).0.is_empty(),
            "a reboot at the learned cadence"
        );
        h.boot_time_s = 200_100;
        h.kernel_release = "6.1.99".try_into().expect("short");
        h.manifests[0].version = 4;
        let (r, _) = b.hello(&cx, &h, true);
        assert_eq!(
            rules(&r),
            [
                alert::KERNEL_CHANGED.id,
                alert::MANIFEST_CHANGED.id,
                alert::UNEXPECTED_REBOOT.id
            ]
        );
    }

    #[test]
    fn metric_keys_name_their_kind() {
        assert_eq!(kind_of("net.eth0.tx_bytes"), Kind::NetTxBytes);
        assert_eq!(kind_of("net.br-lan.rx_packets"), Kind::NetRxPackets);
        assert_eq!(kind_of("cpu.busy"), Kind::CpuBusy);
        assert_eq!(num(3.0), "3");
        assert_eq!(num(2.345), "2.35");
    }
}
