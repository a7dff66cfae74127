//! The single writer: takes verified frames from every connection, decides
//! where each stands in its device's sequence space (SPEC.md §4), stores it
//! exactly once in batched transactions, raises the transport alerts, and
//! answers each connection with the ack it may send, only after the
//! transaction is durable. Owns the one write connection to the archive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use vigil_protocol::body::{CheckStatus, FindingKind, Hello};
use vigil_protocol::replay::{stand, Position, Standing};
use vigil_protocol::{Ack, Body, DeviceId, VerifiedBuf, VerifyingKey};

use crate::alert::{self, Raise};
use crate::clock::now_ms;
use crate::config::Policy;
use crate::detect::baseline::{Baseline, Context, MetricLearning, Phase};
use crate::detect::score::Tuning;
use crate::metrics::Metrics;
use crate::store::registry::Registry;
use crate::store::{self, DeviceState, Layout, Store, Track};

/// Work for the writer.
pub enum Job {
    /// Verified frames of one approved device from one connection, in
    /// arrival order.
    Frames {
        device: DeviceId,
        peer: Arc<str>,
        frames: Vec<VerifiedBuf>,
        received_ms: u64,
        reply: oneshot::Sender<Reply>,
    },
    /// A valid self-signed Hello from a device nobody enrolled.
    Pending {
        key: VerifyingKey,
        hello: Box<Hello>,
        peer: Arc<str>,
        reply: oneshot::Sender<Reply>,
    },
    Raise(Raise),
    /// Housekeeping: registry refresh, silence, unexplained holes, retention.
    Tick,
}

#[derive(Debug, Default)]
pub struct Reply {
    /// The ack the connection may send now (everything durable).
    pub ack: Option<Ack>,
    pub stored: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

pub struct Settings {
    pub silence_ms: u64,
    pub loss_grace_ms: u64,
    pub clock_skew_ms: u64,
    pub retention_ms: u64,
    pub rollup_every: Duration,
    /// Signed checkpoints of the hash chain to the sinks this often.
    pub checkpoint_every: Duration,
    pub checkpoint_key: vigil_protocol::SigningKey,
    pub max_pending: u32,
    pub max_pending_per_address: u32,
    pub policy: Policy,
    pub tuning: Tuning,
    pub access: crate::access::Policy,
    /// The ack ledger (`ledger.rs`) beside the archive.
    pub ack_ledger: std::path::PathBuf,
}

/// A device's baseline as the writer holds it.
struct Slot {
    /// The stored revision this copy derives from; an admin change bumps it.
    rev: i64,
    b: Baseline,
    /// Learned sets or an alarm changed: saved in this transaction.
    save_now: bool,
    /// Only the detectors' rolling windows moved: saved periodically.
    save_later: bool,
}

/// Running state of the baselines is saved at least this often.
const BASELINE_SAVE: Duration = Duration::from_secs(30);

/// Loads (or starts) the baseline of `id`.
fn slot<'a>(
    slots: &'a mut HashMap<String, Slot>,
    tx: &store::Tx,
    id: &str,
    now: u64,
    period_ms: u64,
) -> Result<&'a mut Slot, store::StoreError> {
    if !slots.contains_key(id) {
        let row = match store::baseline_row(tx, id)? {
            Some(r) => r,
            None => {
                store::ensure_baseline(tx, id, now)?;
                store::baseline_row(tx, id)?.unwrap_or(store::BaselineRow {
                    rev: 0,
                    phase: "baselining".into(),
                    started_ms: now,
                    body: String::new(),
                })
            }
        };
        let mut b = Baseline::from_row(&row).unwrap_or_else(|e| {
            log::error!("device {id}: {e}; starting a new baseline");
            Baseline::new(now)
        });
        let save_now = b.schedule(period_ms);
        slots.insert(
            id.to_string(),
            Slot {
                rev: row.rev,
                b,
                save_now,
                save_later: false,
            },
        );
    }
    slots
        .get_mut(id)
        .ok_or_else(|| store::StoreError::NoDevice(id.to_string()))
}

/// Writes the baselines that need it; a copy an admin changed meanwhile
/// is dropped (the stored one is read again when next needed).
fn save_baselines(
    slots: &mut HashMap<String, Slot>,
    tx: &store::Tx,
    all: bool,
) -> Result<(), store::StoreError> {
    let mut stale = Vec::new();
    for (id, s) in slots.iter_mut() {
        if !(s.save_now || (all && s.save_later)) {
            continue;
        }
        if !store::save_baseline(tx, id, s.rev, s.b.phase.name(), &s.b.to_json())? {
            stale.push(id.clone());
        }
        s.save_now = false;
        s.save_later = false;
    }
    for id in stale {
        slots.remove(&id);
    }
    Ok(())
}

struct DeviceTrack {
    num: i64,
    track: Option<Track>,
    layout: Layout,
    boot_id: Option<String>,
    /// The manifests in force as the device's last `Hello` named them:
    /// (class, issuer, scope, highest version seen).
    manifests: Option<Vec<(String, String, String, u64)>>,
    clock: super::skew::ClockWatch,
}

/// The manifests a stored `Hello` (as JSON) names.
fn hello_manifests(h: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    let f = |m: &serde_json::Value, k: &str| {
        m.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    h.get("manifests")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .map(|m| {
                    let version = m
                        .get("version")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    (f(m, "class"), f(m, "issuer"), f(m, "scope"), version)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub struct Writer {
    store: Store,
    registry: Registry,
    metrics: Arc<Metrics>,
    settings: Settings,
    devices: HashMap<DeviceId, DeviceTrack>,
    registry_version: i64,
    silent: std::collections::HashSet<String>,
    baselines: HashMap<String, Slot>,
    baselines_saved: Instant,
    /// Transactions failed in a row (a full disk), and when that was last
    /// logged.
    failed_commits: u64,
    failure_said: Option<Instant>,
    /// When the current run of failed transactions began.
    failing_since_ms: u64,
    ledger: super::ledger::Ledger,
    /// A ledger write failed and was logged (once per run of failures).
    ledger_failing: bool,
}

/// Most frames taken into one transaction.
const BATCH_FRAMES: usize = 8192;

impl Writer {
    pub fn new(
        store: Store,
        registry: Registry,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Result<Writer, store::StoreError> {
        let opened = super::ledger::Ledger::open(&settings.ack_ledger, &store.archive_id()?)
            .map_err(|e| store::StoreError::Refused(format!("ack ledger {e}")))?;
        let mut w = Writer {
            ledger: opened.ledger,
            ledger_failing: false,
            store,
            registry,
            metrics,
            settings,
            devices: HashMap::new(),
            registry_version: -1,
            silent: Default::default(),
            baselines: HashMap::new(),
            baselines_saved: Instant::now(),
            failed_commits: 0,
            failure_said: None,
            failing_since_ms: 0,
        };
        w.refresh_registry()?;
        w.reconcile(&opened.acked, opened.fresh, &opened.bad_slots)?;
        Ok(w)
    }

    /// Compares what the ledger says was acknowledged with what the
    /// archive holds: an ack the archive no longer backs is archive loss,
    /// alerted once, and the track moves past it (the agent dropped those
    /// frames when it was acked: waiting for them would hold every later
    /// ack and blame the transport). A new ledger is filled from the
    /// archive.
    fn reconcile(
        &mut self,
        acked: &[super::ledger::Acked],
        fresh: bool,
        bad_slots: &[i64],
    ) -> Result<(), store::StoreError> {
        use super::ledger::Acked;
        if !bad_slots.is_empty() {
            log::warn!(
                "ack ledger {}: slots of devices {bad_slots:?} do not check out; they are rewritten at the next ack",
                self.settings.ack_ledger.display()
            );
        }
        let now = now_ms();
        let tx = self.store.transaction()?;
        let mut lost_devices = 0;
        for a in acked {
            let id = a.device.to_string();
            let Some(d) = self.devices.get_mut(&a.device) else {
                // The device's enrollment is gone with the frames.
                log::error!(
                    "archive loss: device {id} was acknowledged up to {}/{} but the archive no longer knows it",
                    a.boot,
                    a.seq
                );
                let ev = json!({"boot": a.boot, "missing_from": 0, "missing_to": a.seq,
                                "expected": "the device and every frame acknowledged to it",
                                "seen": "the device is not in the archive"});
                raise(
                    &tx,
                    &self.metrics,
                    Raise::new(
                        alert::ARCHIVE_LOSS,
                        id.clone(),
                        format!("{}/{}", a.boot, a.seq),
                        ev,
                        now,
                    ),
                )?;
                lost_devices += 1;
                continue;
            };
            let behind = match &d.track {
                None => true,
                Some(t) => {
                    t.boot < a.boot || (t.boot == a.boot && t.acked.map_or(true, |s| s < a.seq))
                }
            };
            let t = d.track.get_or_insert_with(Track::default);
            if !behind {
                continue;
            }
            if t.boot != a.boot {
                *t = Track {
                    boot: a.boot,
                    high: a.seq,
                    ..Track::default()
                };
            }
            let from = t.acked.map_or(0, |s| s.saturating_add(1));
            let count = a.seq.saturating_add(1).saturating_sub(from);
            let (stored, _) = store::stored_of(&tx, d.num, a.boot, &[(from, count)])?;
            let missing = count.saturating_sub(stored);
            log::error!(
                "archive loss: device {id} was acknowledged up to {}/{} but the archive holds it only to {};                  {missing} acknowledged frames are gone (a damaged WAL cut off in recovery, or an older archive restored)",
                a.boot,
                a.seq,
                from.checked_sub(1).map_or("before its first frame".into(), |s| s.to_string())
            );
            let ev = json!({"boot": a.boot, "missing_from": from, "missing_to": a.seq,
                            "lost_frames": missing, "acked_seq": a.seq,
                            "archive_acked_seq": t.acked,
                            "expected": "every acknowledged frame in the archive",
                            "seen": format!("{missing} acknowledged frames of boot {} missing after recovery", a.boot)});
            raise(
                &tx,
                &self.metrics,
                Raise::new(
                    alert::ARCHIVE_LOSS,
                    id.clone(),
                    format!("{}/{from}", a.boot),
                    ev,
                    now,
                ),
            )?;
            mark(t, from, count);
            t.high = t.high.max(a.seq);
            if !has_hole(t) {
                t.hole_since_ms = None;
            }
            store::update_device(&tx, &id, 0, 0, t, None, "")?;
            lost_devices += 1;
        }
        tx.commit()?;
        // The ledger from here on: every device's ack as the archive (now
        // reconciled) has it.
        let in_ledger: std::collections::HashSet<DeviceId> =
            acked.iter().map(|a| a.device).collect();
        for (device, d) in &self.devices {
            if let Some((t, seq)) = d.track.as_ref().and_then(|t| Some((t, t.acked?))) {
                if fresh || !in_ledger.contains(device) || lost_devices > 0 {
                    let a = Acked {
                        num: d.num,
                        device: *device,
                        boot: t.boot,
                        seq,
                    };
                    if let Err(e) = self.ledger.record(&a) {
                        log::warn!("ack ledger {}: {e}", self.settings.ack_ledger.display());
                    }
                }
            }
        }
        if lost_devices == 0 {
            log::debug!(
                "ack ledger {}: every acknowledged frame is in the archive",
                self.settings.ack_ledger.display()
            );
        }
        Ok(())
    }

    /// Re-reads who is trusted when an admin command changed it.
    fn refresh_registry(&mut self) -> Result<(), store::StoreError> {
        let v = self.store.registry_version()?;
        if v == self.registry_version {
            return Ok(());
        }
        self.registry_version = v;
        let stored = self.store.baseline_revs()?;
        self.baselines
            .retain(|id, s| stored.get(id).map_or(true, |&rev| rev == s.rev));
        let devices = self.store.devices()?;
        for d in &devices {
            if let Some(id) = DeviceId::from_hex(&d.id) {
                self.devices.entry(id).or_insert_with(|| DeviceTrack {
                    num: d.num,
                    track: d.track.clone(),
                    layout: d.hello.as_ref().map(Layout::from_json).unwrap_or_default(),
                    boot_id: d
                        .hello
                        .as_ref()
                        .and_then(|h| h.get("kernel_boot_id"))
                        .and_then(|b| b.as_str())
                        .map(str::to_string),
                    manifests: d.hello.as_ref().map(hello_manifests),
                    clock: Default::default(),
                });
            }
        }
        self.registry.replace(&devices);
        log::debug!("registry version {v}: {} devices", devices.len());
        Ok(())
    }

    /// Runs until every sender is gone, then returns (all work committed).
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // The first tick rolls up what aged while the collector was down.
        let mut last_rollup: Option<Instant> = None;
        let mut last_seal = Instant::now();
        let mut last_checkpoint = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut frames = job_frames(&first);
            let mut jobs = vec![first];
            while frames < BATCH_FRAMES {
                match rx.try_recv() {
                    Ok(j) => {
                        frames += job_frames(&j);
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let tick = jobs.iter().any(|j| matches!(j, Job::Tick));
            jobs.retain(|j| !matches!(j, Job::Tick));
            if !jobs.is_empty() {
                self.commit(jobs);
            }
            if tick {
                self.metrics
                    .writer_ticks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let rollup =
                    last_rollup.map_or(true, |t| t.elapsed() >= self.settings.rollup_every);
                if rollup {
                    last_rollup = Some(Instant::now());
                }
                if let Err(e) = self.housekeeping(rollup) {
                    log::error!("housekeeping: {e}");
                }
                let checkpoint = last_checkpoint.elapsed() >= self.settings.checkpoint_every;
                // Not while transactions fail (said once, above): the seal
                // follows when writes resume.
                let due = checkpoint || last_seal.elapsed() >= store::chain::SEAL_EVERY;
                if due && self.failed_commits == 0 {
                    match self.seal(checkpoint) {
                        Ok(()) => {
                            last_seal = Instant::now();
                            if checkpoint {
                                last_checkpoint = Instant::now();
                            }
                        }
                        Err(e) => log::error!("sealing the archive's hash chain: {e}"),
                    }
                }
            }
        }
        if let Err(e) = self.seal(true) {
            log::error!("the last checkpoint of the archive's hash chain: {e}");
        }
        let saved = self.store.transaction().and_then(|tx| {
            save_baselines(&mut self.baselines, &tx, true)?;
            Ok(tx.commit()?)
        });
        if let Err(e) = saved {
            log::error!("saving the detectors' state: {e}");
        }
        log::info!("archive writer stopped; everything received is committed");
    }

    /// Writes resumed: the failure the sinks were told of goes into the
    /// archive's record, resolved (the sinks get that too).
    fn record_write_failure(&mut self) -> Result<(), store::StoreError> {
        let now = now_ms();
        let tx = self.store.transaction()?;
        let ev = json!({
            "expected": "archive transactions commit",
            "seen": format!("{} transactions failed from {} to {}: nothing was acknowledged meanwhile",
                            self.failed_commits, alert::rfc3339(self.failing_since_ms), alert::rfc3339(now)),
        });
        raise(
            &tx,
            &self.metrics,
            Raise::new(alert::ARCHIVE_WRITE_FAILED, "", "", ev, now),
        )?;
        store::resolve_rule_emitted(&tx, "", alert::ARCHIVE_WRITE_FAILED.id, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Writes the committed acks to the ledger; a failure is logged once
    /// per run (the acks still go: they are durable in the archive, only
    /// the check of a later recovery is weaker meanwhile).
    fn record_acks(&mut self, acks: &[super::ledger::Acked]) {
        let failed = acks.iter().find_map(|a| self.ledger.record(a).err());
        match failed {
            Some(e) if !self.ledger_failing => {
                log::error!(
                    "ack ledger {}: {e}; acks go on, but archive loss in a later recovery may go unnamed",
                    self.settings.ack_ledger.display()
                );
                self.ledger_failing = true;
            }
            None if self.ledger_failing => {
                log::info!(
                    "ack ledger {}: writes resumed",
                    self.settings.ack_ledger.display()
                );
                self.ledger_failing = false;
            }
            _ => {}
        }
    }

    /// Seals what was stored since the last seal into the hash chain; with
    /// `checkpoint`, also signs its head and queues that to the sinks.
    fn seal(&mut self, checkpoint: bool) -> Result<(), store::StoreError> {
        let now = now_ms();
        let tx = self.store.transaction()?;
        if checkpoint {
            store::chain::checkpoint(&tx, &self.settings.checkpoint_key, now)?;
        } else {
            store::chain::seal(&tx, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let mut replies = Vec::with_capacity(jobs.len());
        let mut acks = Vec::new();
        let result = (|| -> Result<(), store::StoreError> {
            let tx = self.store.transaction()?;
            let mut touched = HashMap::new();
            for job in jobs {
                match job {
                    Job::Frames {
                        device,
                        peer,
                        frames,
                        received_ms,
                        reply,
                    } => {
                        let r = ingest(
                            &tx,
                            &mut self.devices,
                            &mut touched,
                            &self.metrics,
                            &mut self.baselines,
                            &self.settings,
                            device,
                            &peer,
                            &frames,
                            received_ms,
                        )?;
                        replies.push((reply, r));
                    }
                    Job::Pending {
                        key,
                        hello,
                        peer,
                        reply,
                    } => {
                        let pending = self.registry.pending_count();
                        let id = DeviceId::of(&key).to_string();
                        let now = now_ms();
                        // Enrolled (or approved, or revoked) after the last
                        // registry refresh: the archive's state stands; the
                        // agent reconnects and is taken as that.
                        if let Some(state) = store::device_state(&tx, &id)? {
                            log::debug!(
                                "device {id} is {} since the last registry refresh",
                                state.name()
                            );
                            self.registry.insert(DeviceId::of(&key), key, state);
                            replies.push((reply, Reply::default()));
                            continue;
                        }
                        // The newest per address: a newer key from an
                        // address at its limit replaces that address's
                        // oldest, so one address cannot fill the set.
                        let address = super::address_of(&peer);
                        let same = store::pending_from(&tx, address)?;
                        let mut pending = pending;
                        if same.len() >= self.settings.max_pending_per_address as usize {
                            if let Some(oldest) = same.first() {
                                store::drop_pending(&tx, oldest)?;
                                store::resolve_rule_emitted(
                                    &tx,
                                    oldest,
                                    alert::PENDING_DEVICE.id,
                                    now,
                                )?;
                                if let Some(d) = DeviceId::from_hex(oldest) {
                                    self.registry.remove(&d);
                                }
                                pending = pending.saturating_sub(1);
                                log::info!(
                                    "pending device {oldest} from {address} replaced by {id}: {} pending from that address at most",
                                    self.settings.max_pending_per_address
                                );
                            }
                        }
                        // The oldest overall: a full set refuses newcomers
                        // from other addresses, never evicts a waiting one.
                        if u32::try_from(pending).unwrap_or(u32::MAX) >= self.settings.max_pending {
                            let ev = json!({"peer": &*peer, "device": id, "pending": pending,
                                            "limit": self.settings.max_pending});
                            raise(
                                &tx,
                                &self.metrics,
                                Raise::new(alert::PENDING_LIMIT, "", "", ev, now),
                            )?;
                        } else {
                            store::insert_pending(&tx, &key, &hello, &peer, now)?;
                            self.registry
                                .insert(DeviceId::of(&key), key, DeviceState::Pending);
                            let ev = json!({"peer": &*peer, "hostname": hello.hostname.as_str(),
                                            "kernel_release": hello.kernel_release.as_str(),
                                            "expected": "an enrolled device",
                                            "seen": "a valid self-signed Hello from a new key",
                                            "approve_with": format!("vigil-collector approve {id}")});
                            raise(
                                &tx,
                                &self.metrics,
                                Raise::new(alert::PENDING_DEVICE, id.clone(), "", ev, now),
                            )?;
                            log::info!(
                                "device {id} ({}) from {peer} is pending enrollment",
                                hello.hostname
                            );
                        }
                        replies.push((reply, Reply::default()));
                    }
                    Job::Raise(r) => raise(&tx, &self.metrics, r)?,
                    Job::Tick => {}
                }
            }
            save_baselines(&mut self.baselines, &tx, false)?;
            // One row update per device per transaction, however many
            // batches it sent.
            for (device, t) in touched {
                let (num, track) = self
                    .devices
                    .get(&device)
                    .map(|d| (d.num, d.track.clone().unwrap_or_default()))
                    .unwrap_or_default();
                if let Some(seq) = track.acked {
                    acks.push(super::ledger::Acked {
                        num,
                        device,
                        boot: track.boot,
                        seq,
                    });
                }
                store::update_device(
                    &tx,
                    &device.to_string(),
                    t.frames,
                    t.last_seen_ms,
                    &track,
                    t.hello.as_ref(),
                    &t.peer,
                )?;
            }
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                // Committed: the ledger first, then the acks.
                self.record_acks(&acks);
                self.metrics.observe_commit(started.elapsed());
                if self.failed_commits > 0 {
                    log::info!(
                        "archive writes resumed after {} failed transactions",
                        self.failed_commits
                    );
                    if let Err(e) = self.record_write_failure() {
                        log::warn!("recording the archive write failure: {e}");
                    }
                    self.failed_commits = 0;
                }
                for (reply, r) in replies {
                    self.metrics.committed(r.stored, r.duplicates);
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                // Nothing was committed: no acks, the agents resend. Every
                // connection is answered (with no ack) and stays open: one
                // failed transaction (a full disk) must not cut every
                // device off and set them all reconnecting.
                for (reply, _) in replies {
                    let _ = reply.send(Reply::default());
                }
                self.failed_commits += 1;
                self.metrics
                    .commit_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self.failed_commits == 1 {
                    // The outbox is in the archive: this alert goes to the
                    // sinks directly, once; it is stored when writes resume.
                    self.failing_since_ms = now_ms();
                    let now = self.failing_since_ms;
                    let a = crate::alert::Alert {
                        id: 0,
                        device: String::new(),
                        device_name: None,
                        rule: alert::ARCHIVE_WRITE_FAILED.id.into(),
                        severity: alert::ARCHIVE_WRITE_FAILED.severity.name().into(),
                        first_seen_ms: now,
                        last_seen_ms: now,
                        count: 1,
                        evidence: json!({
                            "expected": "archive transactions commit",
                            "seen": e.to_string(),
                            "effect": "nothing is acknowledged; the agents keep their frames and resend",
                            "stored": "not yet: sent to the sinks directly, stored when writes resume",
                        }),
                        state: "open".into(),
                    };
                    self.metrics
                        .urgent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(a.to_json());
                }
                // Said at the first failure, then at most once a minute.
                if self.failed_commits == 1
                    || self
                        .failure_said
                        .map_or(true, |t| t.elapsed() >= Duration::from_secs(60))
                {
                    log::error!(
                        "archive transaction failed ({} in a row), nothing acknowledged: {e}",
                        self.failed_commits
                    );
                    self.failure_said = Some(Instant::now());
                }
                // The in-memory tracks and baselines may be ahead of the
                // archive now.
                self.devices.clear();
                self.baselines.clear();
                self.registry_version = -1;
                if let Err(e) = self.refresh_registry() {
                    log::error!("re-reading the archive: {e}");
                }
            }
        }
    }

    fn housekeeping(&mut self, rollup: bool) -> Result<(), store::StoreError> {
        self.refresh_registry()?;
        let now = now_ms();
        let tx = self.store.transaction()?;
        // Silence: approved devices that stopped talking.
        let silent = store::silent_devices(&tx, now.saturating_sub(self.settings.silence_ms))?;
        let mut still = std::collections::HashSet::new();
        for (id, last) in silent {
            still.insert(id.clone());
            if self.silent.contains(&id) {
                continue;
            }
            let ev = json!({
                "expected": format!("telemetry at least every {} s", self.settings.silence_ms / 1000),
                "seen": last.map_or_else(|| "nothing since enrollment".to_string(),
                                          |t| format!("last frame at {}", alert::rfc3339(t))),
            });
            raise(
                &tx,
                &self.metrics,
                Raise::new(alert::SILENCE, id, "", ev, now),
            )?;
        }
        for id in self.silent.difference(&still) {
            store::resolve_rule(&tx, id, alert::SILENCE.id)?;
        }
        self.silent = still;
        // Holes nobody filled or explained in time.
        for (id, d) in &mut self.devices {
            let Some(t) = d.track.as_mut() else { continue };
            let Some(since) = t.hole_since_ms else {
                continue;
            };
            if now.saturating_sub(since) < self.settings.loss_grace_ms {
                continue;
            }
            let next = t.acked.map_or(0, |a| a + 1);
            let upto = t.above.keys().next().copied().unwrap_or(t.high);
            let ev = json!({
                "boot": t.boot,
                "missing_from": next, "missing_to": upto.saturating_sub(1),
                "expected": "every sequence number stored or named by a Gap",
                "seen": format!("{} frames missing for {} s", upto.saturating_sub(next),
                                now.saturating_sub(since) / 1000),
            });
            raise(
                &tx,
                &self.metrics,
                Raise::new(
                    alert::SEQUENCE_LOSS,
                    id.to_string(),
                    format!("{}/{next}", t.boot),
                    ev,
                    now,
                ),
            )?;
            // Alert once per hole; a resend can still fill it.
            t.hole_since_ms = Some(u64::MAX / 2);
        }
        let metrics = &self.metrics;
        crate::access::overstays(&tx, &self.settings.access, now, &mut |tx, r| {
            raise_id(tx, metrics, r)
        })?;
        let periodic = self.baselines_saved.elapsed() >= BASELINE_SAVE;
        if periodic {
            self.baselines_saved = Instant::now();
        }
        save_baselines(&mut self.baselines, &tx, periodic)?;
        tx.commit()?;
        if periodic {
            self.close_due_baselines(now)?;
        }
        if rollup {
            let cutoff = now.saturating_sub(self.settings.retention_ms);
            let n = self.store.roll_up(cutoff)?;
            if n > 0 {
                log::info!("rolled up {n} sample frames older than the retention period");
            }
        }
        Ok(())
    }
}

impl Writer {
    /// Closes every baseline whose period is over: learns the metric
    /// profiles from the samples archived since it started and asks a
    /// person to review it.
    fn close_due_baselines(&mut self, now: u64) -> Result<(), store::StoreError> {
        let period = self.settings.policy.baseline_period_ms;
        for (id, row) in self.store.baselines_learning()? {
            let mut b = match self.baselines.get(&id) {
                Some(s) if s.rev == row.rev => s.b.clone(),
                _ => Baseline::from_row(&row).unwrap_or_else(|_| Baseline::new(row.started_ms)),
            };
            if !b.due(period, now) {
                continue;
            }
            let mut learning = MetricLearning::default();
            let tuning = self.settings.tuning;
            let n = self
                .store
                .for_each_sample(&id, b.started_ms, now, |s, l| learning.add(s, l, &tuning))?;
            b.close(learning, now);
            let tx = self.store.transaction()?;
            if store::save_baseline(&tx, &id, row.rev, b.phase.name(), &b.to_json())? {
                let ev = json!({
                    "samples": n, "metrics": b.learned.metrics.len(),
                    "listeners": b.learned.listeners.len(), "outbound": b.learned.outbound.len(),
                    "expected": "a person reviews what was learned",
                    "seen": format!("baseline period over, learned from {n} samples"),
                    "review_with": format!("vigil-collector baseline show {id}"),
                    "approve_with": format!("vigil-collector baseline approve {id}"),
                });
                raise(
                    &tx,
                    &self.metrics,
                    Raise::new(alert::BASELINE_READY, id.clone(), "", ev, now),
                )?;
                log::info!("device {id}: baseline closed after its period, {n} samples; waiting for review");
            }
            tx.commit()?;
            self.baselines.remove(&id);
        }
        Ok(())
    }
}

/// The kernel boot id as the archive writes it (hex).
fn baseline_boot_id(h: &Hello) -> String {
    h.kernel_boot_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An integrity finding as evidence: what was expected, what was seen.
fn finding(k: &FindingKind) -> serde_json::Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let meta = |m: &vigil_protocol::body::FileMeta| json!({"mode": format!("{:o}", m.mode), "uid": m.uid, "gid": m.gid});
    match k {
        // All zeros: the agent did not hash it, its size already differed.
        FindingKind::Modified { expected, actual } if actual.iter().all(|&b| b == 0) => {
            json!({"kind": "modified", "expected_sha256": hex(expected), "actual_sha256": null, "seen": "another size (not hashed)"})
        }
        FindingKind::Modified { expected, actual } => {
            json!({"kind": "modified", "expected_sha256": hex(expected), "actual_sha256": hex(actual)})
        }
        FindingKind::Metadata { expected, actual } => {
            json!({"kind": "metadata", "expected": meta(expected), "actual": meta(actual)})
        }
        FindingKind::Missing => json!({"kind": "missing"}),
        FindingKind::Unexpected => json!({"kind": "unexpected"}),
        FindingKind::TypeChanged => json!({"kind": "type-changed"}),
        FindingKind::Unreadable => json!({"kind": "unreadable"}),
        FindingKind::BadSignature => json!({"kind": "bad-signature"}),
        FindingKind::UntrustedKey => json!({"kind": "untrusted-key"}),
        FindingKind::Rollback { accepted, offered } => {
            json!({"kind": "rollback", "accepted_version": accepted, "offered_version": offered})
        }
        FindingKind::ScopeChanged => {
            json!({"kind": "scope-changed", "expected": "the class and scope this manifest file was first accepted as", "seen": "a validly signed manifest of another class or scope"})
        }
    }
}

fn job_frames(j: &Job) -> usize {
    match j {
        Job::Frames { frames, .. } => frames.len(),
        _ => 1,
    }
}

fn raise(tx: &store::Tx, metrics: &Metrics, r: Raise) -> Result<(), store::StoreError> {
    raise_id(tx, metrics, r).map(|_| ())
}

/// `raise`, returning the alert's id.
fn raise_id(tx: &store::Tx, metrics: &Metrics, r: Raise) -> Result<i64, store::StoreError> {
    let (id, new) = store::raise(tx, &r)?;
    if new {
        metrics.alert(r.rule.severity);
        log::warn!("{}", log_line(id, &r));
    }
    Ok(id)
}

/// What the log says about a new alert: its id, rule and device, never
/// its evidence (user names, commands, addresses: logs leave the
/// hospital's control less carefully than the archive and the sinks do).
fn log_line(id: i64, r: &Raise) -> String {
    format!(
        "alert {id} {} on {} (evidence: vigil-collector alerts --json)",
        r.rule.id,
        if r.device.is_empty() { "-" } else { &r.device },
    )
}

/// Marks `[first, first+count)` as stored or explained and moves `acked`
/// over everything now contiguous.
pub fn mark(t: &mut Track, first: u64, count: u64) {
    if count == 0 {
        return;
    }
    let next = t.acked.map_or(0, |a| a.saturating_add(1));
    let mut start = first.max(next);
    let mut end = first.saturating_add(count);
    if start >= end {
        return;
    }
    // Merge with overlapping or touching intervals.
    let touching: Vec<(u64, u64)> = t
        .above
        .range(..=end)
        .filter(|(_, &e)| e >= start)
        .map(|(&s, &e)| (s, e))
        .collect();
    for (s, e) in touching {
        t.above.remove(&s);
        start = start.min(s);
        end = end.max(e);
    }
    t.above.insert(start, end);
    if let Some((&s, &e)) = t.above.iter().next() {
        if s <= next {
            t.above.remove(&s);
            t.acked = Some(e - 1);
        }
    }
}

/// Whether some sequence below `high` is neither stored nor explained.
fn has_hole(t: &Track) -> bool {
    let next = t.acked.map_or(0, |a| a + 1);
    next <= t.high
}

/// What a transaction changed about one device, written once at its end.
struct Touched {
    frames: u64,
    last_seen_ms: u64,
    hello: Option<Hello>,
    peer: Arc<str>,
}

#[allow(clippy::too_many_arguments)]
fn ingest(
    tx: &store::Tx,
    devices: &mut HashMap<DeviceId, DeviceTrack>,
    touched_devices: &mut HashMap<DeviceId, Touched>,
    metrics: &Metrics,
    baselines: &mut HashMap<String, Slot>,
    settings: &Settings,
    device: DeviceId,
    peer: &Arc<str>,
    frames: &[VerifiedBuf],
    received_ms: u64,
) -> Result<Reply, store::StoreError> {
    let id = device.to_string();
    if let std::collections::hash_map::Entry::Vacant(e) = devices.entry(device) {
        // Approved since the last registry refresh.
        let Some(num) = store::device_num(tx, &id)? else {
            for _ in frames {
                metrics.reject("unknown_device");
            }
            return Ok(Reply {
                rejected: frames.len(),
                ..Reply::default()
            });
        };
        e.insert(DeviceTrack {
            num,
            track: None,
            layout: Layout::default(),
            boot_id: None,
            manifests: None,
            clock: Default::default(),
        });
    }
    let Some(d) = devices.get_mut(&device) else {
        return Ok(Reply::default());
    };
    let mut reply = Reply::default();
    let mut latest_hello = None;
    let mut touched = false;
    for buf in frames {
        let v = buf.frame();
        let h = *v.header();
        if let Some(s) = d
            .clock
            .observe(h.time_ms, received_ms, settings.clock_skew_ms)
        {
            let skew_s = s.ahead_ms / 1000;
            let ev = json!({"boot": h.boot, "seq": h.seq,
                            "device_time": alert::rfc3339(h.time_ms), "received": alert::rfc3339(received_ms),
                            "skew_s": skew_s, "direction": s.direction(),
                            "expected": format!("a clock within {} s of the collector's", settings.clock_skew_ms / 1000),
                            "seen": format!("the device's clock {} s {}", skew_s.unsigned_abs(), s.direction())});
            raise(
                tx,
                metrics,
                Raise::new(
                    alert::CLOCK_SKEW,
                    id.clone(),
                    s.direction(),
                    ev,
                    received_ms,
                ),
            )?;
        }
        let highest = d.track.as_ref().map(|t| Position {
            boot: t.boot,
            seq: t.high,
        });
        let standing = stand(highest, &h);
        match standing {
            Standing::StaleBoot => {
                reply.rejected += 1;
                metrics.reject("replay");
                let cur = d.track.as_ref().map_or(0, |t| t.boot);
                let ev = json!({"peer": &**peer, "boot": h.boot, "seq": h.seq,
                                "expected": format!("boot {cur} or later"),
                                "seen": format!("a frame of older boot {}", h.boot)});
                raise(
                    tx,
                    metrics,
                    Raise::new(alert::REPLAY, id.clone(), "stale-boot", ev, received_ms),
                )?;
                continue;
            }
            Standing::First | Standing::NewBoot { .. } => {
                if let Some(old) = d.track.as_ref().filter(|t| has_hole(t)) {
                    let next = old.acked.map_or(0, |a| a + 1);
                    let ev = json!({"boot": old.boot, "missing_from": next, "highest": old.high,
                                    "expected": "every frame of the previous boot",
                                    "seen": format!("a new boot {} with frames of boot {} missing", h.boot, old.boot)});
                    raise(
                        tx,
                        metrics,
                        Raise::new(
                            alert::SEQUENCE_LOSS,
                            id.clone(),
                            format!("{}/{next}", old.boot),
                            ev,
                            received_ms,
                        ),
                    )?;
                }
                d.track = Some(Track {
                    boot: h.boot,
                    high: h.seq,
                    ..Track::default()
                });
            }
            Standing::Ahead { .. } => {
                if let Some(t) = d.track.as_mut() {
                    t.high = h.seq;
                }
            }
            Standing::Behind => {}
        }
        let body = v.body().ok();
        if body.is_none() {
            metrics.reject("malformed");
            let ev = json!({"boot": h.boot, "seq": h.seq, "kind": v.kind().map(|k| k.name()),
                            "expected": "a body this collector decodes", "seen": "archived undecoded"});
            raise(
                tx,
                metrics,
                Raise::new(alert::MALFORMED, id.clone(), "", ev, received_ms),
            )?;
        }
        if let Some(Body::Hello(hello)) = &body {
            d.layout = Layout::of(hello);
        }
        let inserted = store::store_frame(tx, d.num, &v, body.as_ref(), &d.layout, received_ms)?;
        touched = true;
        let Some(t) = d.track.as_mut() else { continue };
        if t.boot != h.boot {
            continue;
        }
        mark(t, h.seq, 1);
        if !inserted {
            reply.duplicates += 1;
            continue;
        }
        reply.stored += 1;
        let cx = Context {
            device: &id,
            policy: &settings.policy,
            tuning: &settings.tuning,
            now_ms: received_ms,
        };
        let detected = match &body {
            Some(b @ (Body::Samples(_) | Body::Sockets(_) | Body::Hello(_))) => {
                let slot = slot(
                    baselines,
                    tx,
                    &id,
                    received_ms,
                    settings.policy.baseline_period_ms,
                )?;
                match b {
                    Body::Samples(s) => {
                        let (r, opened) = slot.b.samples(&cx, s.as_slice(), &d.layout);
                        slot.save_now |= opened;
                        slot.save_later |= slot.b.phase == Phase::Monitoring;
                        r
                    }
                    Body::Sockets(s) => {
                        let (r, changed) = slot.b.sockets(&cx, s, h.time_ms);
                        slot.save_now |= changed;
                        slot.save_later = true;
                        r
                    }
                    Body::Hello(hello) => {
                        let rebooted = h.seq == 0
                            && d.boot_id
                                .as_ref()
                                .is_some_and(|prev| *prev != baseline_boot_id(hello));
                        let (r, changed) = slot.b.hello(&cx, hello, rebooted);
                        slot.save_now |= changed;
                        r
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        for r in detected {
            let (rule, peer) = (r.rule, r.dedup.clone());
            let alert_id = raise_id(tx, metrics, r)?;
            if rule == alert::INTERNET_INBOUND {
                crate::access::link_network(tx, &id, &peer, alert_id)?;
            }
        }
        match &body {
            Some(Body::Hello(hello)) => {
                let boot_id = baseline_boot_id(hello);
                if h.seq == 0 {
                    if let Some(prev) = &d.boot_id {
                        let (rule, seen) = if *prev == boot_id {
                            (alert::AGENT_RESTART, "same kernel boot id")
                        } else {
                            (alert::REBOOT, "new kernel boot id")
                        };
                        let ev = json!({"boot": h.boot, "kernel_boot_id": boot_id, "previous_kernel_boot_id": prev,
                                        "boot_time": alert::rfc3339(hello.boot_time_s.saturating_mul(1000)),
                                        "expected": "the same sequence space", "seen": seen});
                        raise(
                            tx,
                            metrics,
                            Raise::new(rule, id.clone(), format!("{}", h.boot), ev, received_ms),
                        )?;
                    }
                }
                d.boot_id = Some(boot_id);
                // A manifest the device named before and names no more:
                // its integrity is no longer checked there, whatever the
                // baseline's phase (a configuration edited to drop it, a
                // manifest removed before the agent started).
                let now_named = hello_manifests(&store::hello_json(hello));
                for (class, issuer, scope, was) in d.manifests.iter().flatten() {
                    let now = now_named
                        .iter()
                        .find(|(_, i, s, _)| i == issuer && s == scope);
                    // An older version than the device ran before: a
                    // rollback, whatever the device's own record says (it
                    // can be deleted or edited on the device).
                    if let Some((_, _, _, v)) = now.filter(|(_, _, _, v)| v < was) {
                        let ev = json!({"class": class, "issuer": issuer, "scope": scope, "boot": h.boot,
                                        "version": v, "previous_version": was,
                                        "expected": format!("version {was} or later"),
                                        "seen": format!("the device runs version {v} of the {class} manifest of {issuer} ({scope}), after {was}")});
                        raise(
                            tx,
                            metrics,
                            Raise::new(
                                alert::MANIFEST_ROLLBACK,
                                id.clone(),
                                format!("{issuer}/{scope}/{v}"),
                                ev,
                                received_ms,
                            ),
                        )?;
                    }
                    if now.is_some() {
                        continue;
                    }
                    let ev = json!({"class": class, "issuer": issuer, "scope": scope, "boot": h.boot,
                                    "expected": "every manifest the device checked before",
                                    "seen": format!("the device's Hello no longer names the {class} manifest of {issuer} ({scope})")});
                    raise(
                        tx,
                        metrics,
                        Raise::new(
                            alert::MANIFEST_GONE,
                            id.clone(),
                            format!("{issuer}/{scope}"),
                            ev,
                            received_ms,
                        ),
                    )?;
                }
                // The highest version seen stays the reference (a second
                // Hello of the old version is not a new rollback).
                let mut next = now_named;
                for old in d.manifests.iter().flatten() {
                    if let Some(m) = next.iter_mut().find(|m| m.1 == old.1 && m.2 == old.2) {
                        m.3 = m.3.max(old.3);
                    }
                }
                d.manifests = Some(next);
                latest_hello = Some(hello.clone());
            }
            Some(Body::Gap(g)) => {
                for r in &g.ranges {
                    mark(t, r.first, r.count);
                }
                // An agent that failed over names what another collector
                // acknowledged: nothing was dropped, and what of it this
                // archive holds stays.
                if g.reason == vigil_protocol::body::GapReason::Elsewhere {
                    log::info!(
                        "device {id}: boot {} frames {} were acknowledged by another collector",
                        h.boot,
                        g.ranges
                            .iter()
                            .map(|r| format!(
                                "{}..={}",
                                r.first,
                                r.first.saturating_add(r.count).saturating_sub(1)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    continue;
                }
                // The agent names what its queue evicted unacknowledged;
                // what of it arrived before is not lost.
                let ranges: Vec<_> = g.ranges.iter().map(|r| (r.first, r.count)).collect();
                let (arrived, arrived_samples) = store::stored_of(tx, d.num, h.boot, &ranges)?;
                let lost = g.frames().saturating_sub(arrived);
                if lost == 0 {
                    log::info!(
                        "device {id}: a Gap named {} frames, all of them already stored",
                        g.frames()
                    );
                    continue;
                }
                let lost_samples = g.samples.saturating_sub(arrived_samples);
                let ev = json!({
                    "boot": h.boot, "reason": format!("{:?}", g.reason), "kind": g.kind.name(),
                    "dropped_frames": lost, "dropped_samples": lost_samples,
                    "named_frames": g.frames(), "named_but_stored": arrived,
                    "ranges": ranges.iter().map(|&(a, n)| json!([a, n])).collect::<Vec<_>>(),
                    "expected": "no telemetry dropped", "seen": format!("the agent dropped {lost_samples} samples in {lost} frames"),
                });
                raise(
                    tx,
                    metrics,
                    Raise::new(
                        alert::AGENT_GAP,
                        id.clone(),
                        format!("{}/{}", h.boot, h.seq),
                        ev,
                        received_ms,
                    ),
                )?;
            }
            Some(Body::Integrity(i)) => {
                for f in &i.findings {
                    let path = String::from_utf8_lossy(&f.path).into_owned();
                    let ev = json!({
                        "manifest": {"class": i.manifest.class.name(), "issuer": i.manifest.issuer.as_str(),
                                     "scope": i.manifest.scope.as_str(), "version": i.manifest.version},
                        "path": path, "finding": finding(&f.kind),
                        "expected": "exactly what the signed manifest lists",
                    });
                    raise(
                        tx,
                        metrics,
                        Raise::new(alert::INTEGRITY, id.clone(), path, ev, received_ms),
                    )?;
                }
            }
            Some(Body::Sessions(s)) => {
                crate::access::ingest(
                    tx,
                    &settings.access,
                    &id,
                    h.boot,
                    h.seq,
                    s,
                    received_ms,
                    &mut |tx, r| raise_id(tx, metrics, r),
                )?;
            }
            Some(Body::Posture(p)) => {
                for c in p.results.iter().filter(|c| c.status == CheckStatus::Fail) {
                    let ev = json!({"check": c.id.as_str(), "title": c.title.as_str(),
                                    "seen": c.evidence.as_str(), "expected": "pass"});
                    raise(
                        tx,
                        metrics,
                        Raise::new(
                            alert::POSTURE,
                            id.clone(),
                            c.id.to_string(),
                            ev,
                            received_ms,
                        ),
                    )?;
                }
            }
            _ => {}
        }
    }
    if let Some(t) = d.track.as_mut() {
        if has_hole(t) {
            t.hole_since_ms.get_or_insert(received_ms);
        } else {
            t.hole_since_ms = None;
        }
    }
    if touched {
        let t = touched_devices.entry(device).or_insert_with(|| Touched {
            frames: 0,
            last_seen_ms: 0,
            hello: None,
            peer: Arc::clone(peer),
        });
        t.frames += u64::try_from(frames.len()).unwrap_or(0);
        t.last_seen_ms = t.last_seen_ms.max(received_ms);
        t.peer = Arc::clone(peer);
        if latest_hello.is_some() {
            t.hello = latest_hello;
        }
    }
    reply.ack = d.track.as_ref().and_then(|t| {
        t.acked.map(|seq| Ack {
            device,
            boot: t.boot,
            seq,
        })
    });
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn an_alert_is_logged_without_its_evidence() {
        let r = Raise::new(
            alert::ACCESS_ROOT,
            "0123456789abcdef",
            "k",
            json!({"user": "dr.jones", "command": "cat /data/patient-4711.dcm",
                   "remote": "203.0.113.9"}),
            0,
        );
        let line = log_line(42, &r);
        assert_eq!(
            line,
            "alert 42 access.root-session on 0123456789abcdef (evidence: vigil-collector alerts --json)"
        );
        for private in ["dr.jones", "patient", "203.0.113.9"] {
            assert!(!line.contains(private), "{line}");
        }
    }

    fn track() -> Track {
        Track::default()
    }

    #[test]
    fn contiguous_frames_advance_the_ack() {
        let mut t = track();
        mark(&mut t, 0, 1);
        assert_eq!(t.acked, Some(0));
        mark(&mut t, 1, 1);
        assert_eq!(t.acked, Some(1));
        assert!(t.above.is_empty());
    }

    #[test]
    fn holes_hold_the_ack_until_filled_or_explained() {
        let mut t = track();
        mark(&mut t, 0, 1);
        mark(&mut t, 5, 1);
        mark(&mut t, 6, 1);
        t.high = 6;
        assert_eq!(t.acked, Some(0));
        assert!(has_hole(&t));
        assert_eq!(t.above, BTreeMap::from([(5, 7)]));
        // A resend fills 1..=2, a Gap explains 3..=4.
        mark(&mut t, 1, 1);
        mark(&mut t, 2, 1);
        assert_eq!(t.acked, Some(2));
        mark(&mut t, 3, 2);
        assert_eq!(t.acked, Some(6));
        assert!(!has_hole(&t));
        assert!(t.above.is_empty());
        // Marks at or below the ack change nothing.
        mark(&mut t, 0, 3);
        assert_eq!(t.acked, Some(6));
    }

    #[test]
    fn huge_ranges_do_not_overflow() {
        let mut t = track();
        mark(&mut t, u64::MAX - 3, 10);
        assert_eq!(t.above, BTreeMap::from([(u64::MAX - 3, u64::MAX)]));
        mark(&mut t, 0, u64::MAX);
        assert_eq!(t.acked, Some(u64::MAX - 1));
    }
}
