//! The running agent: a sampling loop (this thread) that batches samples
//! into signed frames, a link thread that sends queued frames and applies
//! acks, reconnecting with exponential backoff and jitter, and a signal
//! thread (SIGTERM/SIGINT: flush and exit 0; SIGHUP: reload the config).
//! Synchronous threads, no async runtime.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::BTreeSet;

use vigil_protocol::body::{
    Body, BodyKind, Sessions, Sockets, MAX_SESSION_EVENTS, MAX_SOCKET_CHANGES,
};
use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::{
    to_wire, DeviceId, Downlink, Frame, Header, Sample, Samples, SigningKey, Standing, VERSION,
};

use crate::config::Config;
use crate::inventory;
use crate::link::Link;
use crate::queue::{PushError, Queue};
use crate::sample::reading::{self, Differ, Layout};
use crate::sample::{sockets, Issue};

/// How long SIGTERM waits for the collector to ack what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Go-back-N: frames outstanding this long without the collector's ack
/// moving are sent again (one lost on a noisy serial line holds the ack
/// below it forever otherwise; the collector stores each frame once). The
/// wait doubles while nothing moves (a collector that holds a pending
/// device's frames unacked), up to `RESEND_MAX`.
const RESEND_AFTER: Duration = Duration::from_secs(3);
const RESEND_MAX: Duration = Duration::from_secs(60);
/// With failover collectors configured, one that has acknowledged nothing
/// for this long while frames wait is left for the next (a hung host whose
/// kernel still takes bytes, a stalled process): the bound on detecting a
/// hung collector when its socket buffers are large, and well above an
/// ack's round trip on a loaded collector.
const ACK_SILENCE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a session that ended without an ack releasing anything (refused:
/// a pending or revoked key; closed after the Hello; no ack at all), the
/// next attempt waits this long, doubling (with jitter) up to
/// `NO_PROGRESS_MAX`. Reset only by progress, never by a connect alone.
const NO_PROGRESS_MIN: Duration = Duration::from_secs(1);
const NO_PROGRESS_MAX: Duration = Duration::from_secs(120);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sampler's clock: wall time, or a `TestClock` (soak tests).
#[derive(Debug, Clone, Copy)]
struct Clock {
    warp: Option<(Instant, crate::config::TestClock)>,
}

impl Clock {
    fn new(test: Option<crate::config::TestClock>) -> Clock {
        Clock {
            warp: test.map(|t| (Instant::now(), t)),
        }
    }

    fn now_ms(&self) -> u64 {
        match self.warp {
            None => now_ms(),
            Some((origin, t)) => t.start_ms.saturating_add(self.scaled_ms(origin.elapsed())),
        }
    }

    /// A real duration in the clock's milliseconds.
    fn scaled_ms(&self, real: Duration) -> u64 {
        let f = self.warp.map_or(1, |(_, t)| u128::from(t.factor));
        u64::try_from(real.as_micros() * f / 1000).unwrap_or(u64::MAX)
    }

    /// How long `d` of the clock's time lasts in real time.
    fn real(&self, d: Duration) -> Duration {
        match self.warp {
            None => d,
            Some((_, t)) => (d / t.factor).max(Duration::from_micros(1)),
        }
    }
}

/// Signs frames: owns the device key, the boot counter and the next sequence.
struct Signer {
    key: SigningKey,
    device: DeviceId,
    boot: u32,
    next_seq: u64,
    clock: Clock,
}

struct State {
    queue: Queue,
    signer: Signer,
    /// This boot's signed Hello (its sequence number and bytes), kept after
    /// it is acknowledged: a collector the agent fails over to gets it
    /// first, as it gets nothing of this boot otherwise.
    hello: Option<(u64, Vec<u8>)>,
}

struct Shared {
    state: Mutex<State>,
    config: Mutex<Config>,
    wake: Condvar,
    stop: AtomicBool,
    /// When `stop` was set: the flush budget runs from there.
    stopped_at: Mutex<Option<Instant>>,
    reconnect: AtomicBool,
}

impl Shared {
    /// Asks every thread to stop; the link flushes for `FLUSH_TIMEOUT`.
    fn request_stop(&self) {
        *self
            .stopped_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// The end of the flush budget, counted from the stop request.
    fn flush_deadline(&self) -> Instant {
        self.stopped_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or_else(Instant::now)
            + FLUSH_TIMEOUT
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sleeps up to `d`, returning early when stopping.
    /// Waits `d` for a backoff: early only to stop or for a configuration
    /// change, not for the frames queued meanwhile (which wake `sleep`).
    fn back_off(&self, d: Duration) {
        let end = Instant::now() + d;
        let mut guard = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !self.stop.load(Ordering::SeqCst) && !self.reconnect.load(Ordering::SeqCst) {
            let Some(left) = end
                .checked_duration_since(Instant::now())
                .filter(|l| !l.is_zero())
            else {
                break;
            };
            guard = match self.wake.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn sleep(&self, d: Duration) {
        let guard = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.stop.load(Ordering::SeqCst) {
            let _ = self.wake.wait_timeout(guard, d);
        }
    }
}

impl State {
    /// Signs `body` as the next frame and queues it. Routine frames may
    /// evict older routine frames (counted for the next `Gap`). `false`
    /// when it could not be queued (a full security ring); its sequence
    /// number is then not used, so the collector sees no hole.
    #[must_use = "a security frame can be refused when its ring is full"]
    fn enqueue(&mut self, body: Body, samples: u16) -> bool {
        self.try_enqueue(body, samples).is_ok()
    }

    /// `enqueue` with the reason: `Err(None)` when the frame could not be
    /// encoded (logged), else the queue's refusal.
    fn try_enqueue(&mut self, body: Body, samples: u16) -> Result<(), Option<PushError>> {
        let kind = body.kind();
        let s = &mut self.signer;
        let header = Header {
            version: VERSION,
            device: s.device,
            boot: s.boot,
            seq: s.next_seq,
            time_ms: s.clock.now_ms(),
        };
        let bytes = match Frame::new(header, body).sign(&s.key) {
            Ok(b) => b,
            Err(e) => {
                log::error!(
                    "a {} frame could not be encoded ({e:?}); it is lost",
                    kind.name()
                );
                return Err(None);
            }
        };
        s.next_seq += 1;
        loop {
            match self.queue.push(header.seq, kind, samples, &bytes) {
                Ok(()) => {
                    if kind == BodyKind::Hello {
                        self.hello = Some((header.seq, bytes.to_vec()));
                    }
                    return Ok(());
                }
                Err(PushError::GapFull) => {
                    if !self.report_gap("so far") {
                        return Err(Some(PushError::GapFull));
                    }
                }
                Err(e) => {
                    // Nothing else was signed since (a Gap comes only from
                    // the routine ring): the number goes to the next frame.
                    if self.signer.next_seq == header.seq + 1 {
                        self.signer.next_seq = header.seq;
                    }
                    log::debug!("{} frame not queued: {e:?}", kind.name());
                    return Err(Some(e));
                }
            }
        }
    }
}

impl State {
    /// For a collector other than the one that acknowledged last: this
    /// boot's Hello (when it was acknowledged, so it is no longer queued)
    /// to send first, and a `Gap` queued that names every frame after it
    /// acknowledged so far as acknowledged `Elsewhere` (what this collector
    /// holds of them stays; the rest is at the other collector).
    fn announce_elsewhere(&mut self) -> Option<Vec<u8>> {
        let (hello_seq, bytes) = self.hello.clone()?;
        let upto = self.queue.acked_through().filter(|&u| u >= hello_seq)?;
        if upto > hello_seq {
            let mut ranges = heapless::Vec::new();
            let _ = ranges.push(vigil_protocol::body::SeqRange {
                first: hello_seq + 1,
                count: upto - hello_seq,
            });
            let gap = vigil_protocol::body::Gap {
                reason: vigil_protocol::body::GapReason::Elsewhere,
                kind: BodyKind::Hello,
                samples: 0,
                ranges,
            };
            if !self.enqueue(Body::Gap(gap), 0) {
                log::error!("the Gap naming frames acknowledged elsewhere could not be queued");
            }
        }
        Some(bytes)
    }

    /// `enqueue` for reports that cannot wait (integrity, posture,
    /// sessions). When the security ring is full (the collector has been
    /// away long: about 14 hours of hourly guard passes), the frame is lost,
    /// but not silently: it keeps its sequence number and a `Gap` names it,
    /// so the collector sees exactly which security frames are missing and
    /// raises the loss alert.
    fn put(&mut self, body: Body, samples: u16) {
        let kind = body.kind();
        match self.try_enqueue(body, samples) {
            Ok(()) => {}
            Err(Some(PushError::SecurityFull)) => self.refused(kind),
            Err(e) => log::error!("a {} frame was not queued ({e:?})", kind.name()),
        }
    }

    /// Spends a sequence number on a security frame the full ring refused
    /// and records it for the next `Gap`.
    fn refused(&mut self, kind: vigil_protocol::body::BodyKind) {
        loop {
            // Read again after each Gap: making one spends a number.
            let seq = self.signer.next_seq;
            if self.queue.refuse(seq, kind) {
                self.signer.next_seq += 1;
                log::warn!(
                    "the security queue is full (the collector has been away long): {} frame {seq} is lost; a Gap names it",
                    kind.name()
                );
                return;
            }
            // The pending record is full: make the Gaps first (Gap frames
            // have room of their own in the ring).
            if !self.report_gap("so far") {
                log::error!(
                    "a {} frame was refused by the full security queue and cannot be named in a Gap: lost",
                    kind.name()
                );
                return;
            }
        }
    }

    /// Turns the frames dropped since the last `Gap` into a signed `Gap`
    /// frame (a security frame: never evicted). `false` if there were none.
    fn report_gap(&mut self, when: &str) -> bool {
        let Some(gap) = self.queue.take_gap() else {
            return false;
        };
        log::warn!(
            "queue overflow: {} frames ({} samples) dropped {when}",
            gap.frames(),
            gap.samples
        );
        if !self.enqueue(Body::Gap(gap), 0) {
            log::error!("the Gap frame itself could not be queued: the security queue is full");
        }
        true
    }
}

/// Runs until SIGTERM/SIGINT. Returns after flushing what it can.
pub fn run(cfg: Config, config_path: Option<&Path>) -> anyhow::Result<()> {
    let key = crate::identity::load(&cfg.state_dir)?;
    let boot = crate::identity::next_boot(&cfg.state_dir)?;
    let device = DeviceId::of(&key.verifying_key());
    log::info!(
        "device {device} starting, boot {boot}, sampling every {} ms, {} samples per frame",
        cfg.interval_ms,
        cfg.batch
    );
    crate::privilege::no_new_privs();

    let signals = crate::privilege::block_signals()?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: Queue::new(),
            signer: Signer {
                key,
                device,
                boot,
                next_seq: 0,
                clock: Clock::new(cfg.test_clock),
            },
            hello: None,
        }),
        config: Mutex::new(cfg),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
        stopped_at: Mutex::new(None),
        reconnect: AtomicBool::new(false),
    });
    let reload_path = config_path.map(Path::to_path_buf);
    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                match signals.wait() {
                    Ok(nix::sys::signal::Signal::SIGHUP) => reload(&shared, reload_path.as_deref()),
                    Ok(_) => {
                        log::info!("stopping: flushing queued frames");
                        shared.request_stop();
                        return;
                    }
                    Err(e) => log::warn!("waiting for signals: {e}"),
                }
            })?;
    }
    let link = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("link".into())
            .spawn(move || link_loop(&shared))?
    };
    let guard = crate::guard::Guard::new(&shared.config(), config_path, true);
    let manifests = guard.in_force();
    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("guard".into())
            .spawn(move || {
                crate::guard::run(
                    guard,
                    |bodies| {
                        let mut st = shared.lock();
                        for b in bodies {
                            st.put(b, 0);
                        }
                        drop(st);
                        shared.wake.notify_all();
                    },
                    || shared.stop.load(Ordering::SeqCst),
                );
            })?;
    }
    sample_loop(&shared, &manifests);
    // The link thread ends by itself within the flush budget unless a
    // write is stuck in a peer that takes nothing (TLS can need two such
    // writes for one frame): then the process ends without it, on time.
    let deadline = shared.flush_deadline() + Duration::from_millis(250);
    while !link.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if link.is_finished() {
        let _ = link.join();
    } else {
        log::warn!("the collector took nothing before the flush deadline: not waiting for it");
    }
    let st = shared.lock().queue.stats();
    log::info!("stopped; {} frames left unacknowledged", st.frames);
    Ok(())
}

fn reload(shared: &Shared, path: Option<&Path>) {
    let Some(path) = path else {
        log::warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    let old = shared.config();
    let new = Config::from_file(path).and_then(|c| c.validate().map(|()| c));
    match new {
        Ok(mut c) => {
            // The state directory holds the key and boot counter: not reloadable.
            c.state_dir = old.state_dir.clone();
            let relink = c.collector != old.collector || c.serial != old.serial;
            *shared
                .config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
            shared.reconnect.store(relink, Ordering::SeqCst);
            log::info!("SIGHUP: configuration reloaded from {}", path.display());
        }
        Err(e) => log::error!("SIGHUP: keeping the running configuration: {e}"),
    }
}

/// Logs each distinct issue once (they repeat every tick).
#[derive(Default)]
struct IssueLog(std::collections::HashSet<String>);

impl IssueLog {
    fn report(&mut self, issues: &[Issue]) {
        for i in issues {
            if self.0.len() < 256 && self.0.insert(i.to_string()) {
                log::warn!("partial sample: {i}");
            }
        }
    }
}

fn sample_loop(shared: &Shared, manifests: &[vigil_protocol::body::ManifestVersion]) {
    let mut cfg = shared.config();
    let mut issues = Vec::new();
    let mut seen = IssueLog::default();
    let mut reader = reading::Reader::new(&cfg.root);
    let clock = shared.lock().signer.clock;
    if let Some((_, t)) = clock.warp {
        log::warn!(
            "test clock: sample times start at {} ms and run {}x faster than real time",
            t.start_ms,
            t.factor
        );
    }
    let every = |d: Duration| clock.real(d);
    reader.count_processes(&mut issues);
    let first = reader.read(clock.now_ms(), &mut issues);
    seen.report(&issues);
    let mut layout = Layout::of(&first);
    let root = cfg.root.clone();
    let public_key = shared.lock().signer.key.verifying_key().to_bytes();
    let hello = |r: &reading::Reading, layout: &Layout, issues: &mut Vec<Issue>| {
        inventory::hello(
            &inventory::Inputs {
                public_key,
                root: &root,
                layout,
                boot_time_s: r.boot_time_s,
                cpus: r.cpus,
                manifests,
            },
            issues,
        )
    };
    let h = hello(&first, &layout, &mut issues);
    shared.lock().put(Body::Hello(h), 0);
    shared.wake.notify_all();
    let mut differ = Differ::default();
    let _ = differ.next(first, 0, &layout);
    let mut told = Told::default();
    let mut table: Option<BTreeSet<sockets::Entry>> = None;
    let mut owners = sockets::Owners::new();
    let mut next_sockets = Instant::now();
    let mut tracker = cfg
        .sessions
        .enabled
        .then(|| crate::sessions::Tracker::new(&root, &cfg.sessions));
    let mut next_sessions = Instant::now();
    let mut batch: Option<Samples> = None;
    let mut last = Instant::now();
    let mut next = last + every(Duration::from_millis(cfg.interval_ms));
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            shared.sleep(next - now);
            continue;
        }
        cfg = shared.config();
        let step = every(Duration::from_millis(cfg.interval_ms));
        next += step;
        if next < now {
            next = now + step; // fell behind (suspend): skip, do not burst
        }
        issues.clear();
        let r = reader.read(clock.now_ms(), &mut issues);
        seen.report(&issues);
        let interval = clock.scaled_ms(now.duration_since(last));
        last = now;
        let l = Layout::of(&r);
        if l != layout {
            flush(shared, &mut batch);
            layout = l;
            log::info!("interfaces or disks changed: sending a new inventory");
            let h = hello(&r, &layout, &mut issues);
            shared.lock().put(Body::Hello(h), 0);
        }
        if let Some(s) = differ.next(r, interval, &layout) {
            add(shared, &mut batch, s, cfg.batch);
        }
        if now >= next_sockets {
            // Deadlines, not "now + interval": a tick a few ms early must
            // not skip a whole socket interval.
            let step = every(Duration::from_secs(cfg.sockets_interval_s));
            next_sockets += step;
            if next_sockets < now {
                next_sockets = now + step;
            }
            issues.clear();
            let t = table.insert(sockets::read(&root, &mut owners, &mut issues));
            seen.report(&issues);
            report_sockets(shared, &mut told, t);
        } else if let Some(t) = table.as_ref().filter(|_| told.waiting) {
            // Changes that did not fit go as the link drains, not only at
            // the next read.
            report_sockets(shared, &mut told, t);
        }
        // The process-table scan: sessions and the process count the next
        // samples carry. After the sockets of the same tick: a remote
        // session's peer is then already in the socket table the collector
        // holds.
        if now >= next_sessions {
            let step = every(Duration::from_secs(cfg.sessions.interval_s));
            next_sessions += step;
            if next_sessions < now {
                next_sessions = now + step;
            }
            issues.clear();
            match tracker.as_mut() {
                Some(t) => {
                    let report = t.poll(clock.now_ms() / 1000, &mut issues);
                    reader.set_processes(t.processes());
                    send_sessions(shared, report);
                }
                None => reader.count_processes(&mut issues),
            }
            seen.report(&issues);
        }
    }
    flush(shared, &mut batch);
}

/// Security-ring room socket changes leave for what cannot wait (a `Gap`,
/// integrity and posture findings, sessions).
const SOCKETS_RESERVE: (usize, usize) = (8 * 1024, 32);

/// What the collector has been told of the socket table.
#[derive(Default)]
struct Told {
    /// The table as the reported changes make it (`None`: nothing yet).
    table: Option<BTreeSet<sockets::Entry>>,
    /// Changes are waiting for room in the queue.
    waiting: bool,
}

/// Sends `table` as the changes from what the collector has been told (a
/// snapshot the first time). As many frames as the security ring has room
/// for, keeping `SOCKETS_RESERVE`; what was told moves only by what was
/// queued, so the rest goes later (at the next tick, as the link drains)
/// and nothing is lost however large the table or slow the link.
fn report_sockets(shared: &Shared, told: &mut Told, table: &BTreeSet<sockets::Entry>) {
    let snapshot = told.table.is_none();
    let mut reference = told.table.take().unwrap_or_default();
    let pending = sockets::diff(&reference, table);
    let room = |st: &State| {
        let (bytes, frames) = st.queue.security_room();
        bytes >= SOCKETS_RESERVE.0 && frames >= SOCKETS_RESERVE.1
    };
    let mut sent = 0;
    let mut frames = 0;
    if pending.is_empty() && snapshot {
        let mut st = shared.lock();
        let empty = Body::Sockets(Sockets {
            snapshot,
            changes: heapless::Vec::new(),
        });
        frames += usize::from(room(&st) && st.enqueue(empty, 0));
    }
    for chunk in pending.chunks(MAX_SOCKET_CHANGES) {
        let changes = chunk.iter().map(|(c, e)| sockets::record(*c, e)).collect();
        // The lock is taken per frame: the link thread drains in between.
        let mut st = shared.lock();
        if !room(&st) || !st.enqueue(Body::Sockets(Sockets { snapshot, changes }), 0) {
            break;
        }
        drop(st);
        shared.wake.notify_all();
        sent += chunk.len();
        frames += 1;
    }
    shared.wake.notify_all();
    let waiting = sent < pending.len() || (snapshot && frames == 0);
    if waiting && !told.waiting {
        log::warn!(
            "socket table: {} of {} changes wait for room in the queue (the collector is slow or away); they follow as it drains",
            pending.len() - sent,
            pending.len()
        );
    } else if !waiting && told.waiting {
        log::info!("socket table: the changes that waited are queued");
    }
    told.waiting = waiting;
    sockets::apply(&mut reference, pending.get(..sent).unwrap_or(&[]));
    // A snapshot not begun is begun again next time.
    told.table = (!snapshot || frames > 0).then_some(reference);
}

/// Queues the sessions report as `Sessions` frames (a snapshot always, even
/// empty: it tells the collector nothing else is open).
fn send_sessions(shared: &Shared, report: crate::sessions::Report) {
    if !report.snapshot && report.events.is_empty() {
        return;
    }
    // Logged by key, never by user name: the user is in the signed frame.
    for e in &report.events {
        match e {
            vigil_protocol::body::SessionEvent::LogTampered(t) => log::warn!(
                "{}: {} (had read {} bytes, now {})",
                t.path,
                t.kind.name(),
                t.expected_len,
                t.actual_len
            ),
            vigil_protocol::body::SessionEvent::Opened(s) => log::info!(
                "session opened: {} {:016x} on {} ({}, pid {})",
                s.kind.name(),
                s.key,
                s.terminal,
                s.process,
                s.pid
            ),
            vigil_protocol::body::SessionEvent::Closed { session: s, .. } => log::info!(
                "session closed: {} {:016x} on {} ({}, pid {})",
                s.kind.name(),
                s.key,
                s.terminal,
                s.process,
                s.pid
            ),
        }
    }
    let chunks: Vec<_> = report.events.chunks(MAX_SESSION_EVENTS).collect();
    let n = chunks.len().max(1);
    let mut st = shared.lock();
    for i in 0..n {
        let events = chunks
            .get(i)
            .map_or_else(heapless::Vec::new, |c| c.iter().cloned().collect());
        st.put(
            Body::Sessions(Sessions {
                snapshot: report.snapshot,
                continued: report.snapshot && i + 1 < n,
                events,
            }),
            0,
        );
    }
    drop(st);
    shared.wake.notify_all();
}

fn add(shared: &Shared, batch: &mut Option<Samples>, s: Sample, size: usize) {
    let s = match batch {
        None => {
            *batch = Some(Samples::new(s));
            None
        }
        Some(b) => match b.push(s) {
            Ok(()) => None,
            Err(
                vigil_protocol::sample::BatchError::Full(s)
                | vigil_protocol::sample::BatchError::ShapeChanged(s),
            ) => Some(s),
            Err(_) => None,
        },
    };
    if let Some(s) = s {
        flush(shared, batch);
        *batch = Some(Samples::new(s));
    }
    if batch.as_ref().is_some_and(|b| b.len() >= size) {
        flush(shared, batch);
    }
}

fn flush(shared: &Shared, batch: &mut Option<Samples>) {
    if let Some(b) = batch.take() {
        let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
        shared.lock().put(Body::Samples(b), n);
        shared.wake.notify_all();
    }
}

trait Elapsed {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

impl Elapsed for Option<Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        self.map_or(true, |t| t.elapsed() >= d)
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::getrandom(&mut b);
    // 50 % .. 150 % of d
    d.mul_f64(0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX))
}

/// Why the collector refused this device, as its status said.
const REFUSED_PENDING: &str =
    "the collector holds this device as pending: waiting for a person to approve it (its frames are kept)";
const REFUSED_REVOKED: &str =
    "the collector has revoked this device's key: nothing it sends is stored";

/// Why a session on a failover collector ended: time to try the first
/// collector again.
const FAILING_BACK: &str = "failing back";

/// The collectors the configuration names (their addresses, primary
/// first); one unnamed entry for a serial line.
fn endpoints(cfg: &Config) -> Vec<String> {
    cfg.collector.as_ref().map_or_else(
        || vec![String::new()],
        |c| c.endpoints().into_iter().map(|e| e.address).collect(),
    )
}

fn link_loop(shared: &Shared) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut flush_deadline: Option<Instant> = None;
    let mut last_warn: Option<Instant> = None;
    let mut refused = NO_PROGRESS_MIN;
    // Why sessions end without progress, since they started to: said once.
    let mut last_reason: Option<String> = None;
    // The collector to try next: 0 the primary, then the failovers. A
    // round that reaches none of them waits its backoff, then starts again
    // from the primary.
    let mut at = 0usize;
    // The collector that acknowledged last.
    let mut acked_by: Option<usize> = None;
    loop {
        // Connect with something to send: the first frame (Hello) then
        // leaves at once, not after a read timeout on an idle link. A
        // wake-up lost between the check and the wait costs one `POLL`.
        while shared.lock().queue.is_empty() && !shared.stop.load(Ordering::SeqCst) {
            shared.sleep(crate::link::POLL);
        }
        if shared.stop.load(Ordering::SeqCst) {
            let deadline = *flush_deadline.get_or_insert_with(|| shared.flush_deadline());
            if shared.lock().queue.is_empty() || Instant::now() >= deadline {
                return;
            }
        }
        let cfg = shared.config();
        let names = endpoints(&cfg);
        let n = names.len();
        if at >= n {
            at = 0; // a reload named fewer collectors
        }
        let failback = (at > 0).then(|| {
            Duration::from_secs(
                cfg.collector
                    .as_ref()
                    .map_or(crate::config::default_failback_s(), |c| c.failback_s),
            )
        });
        // Moves on to the next collector; false when that starts a new
        // round (back at the primary).
        // Said at WARN when `loud` (a lost link, a first failure, once a
        // minute while collectors stay down), else at DEBUG.
        let next = |at: &mut usize, why: &str, loud: bool| {
            *at = (*at + 1) % n;
            let to = names.get(*at).map_or("", String::as_str);
            if loud {
                log::warn!("{why}: trying the collector at {to}");
            } else {
                log::debug!("{why}: trying the collector at {to}");
            }
            *at != 0
        };
        shared.reconnect.store(false, Ordering::SeqCst);
        // While stopping, connecting and the handshake get only what is
        // left of the flush budget.
        let within = match flush_deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => crate::link::CONNECT_TIMEOUT,
        };
        let opened = Link::open(&cfg, at, within).and_then(|mut l| {
            l.handshake(within)
                .map_err(|e| crate::link::LinkError::Tls(e.to_string()))?;
            Ok(l)
        });
        match opened {
            Ok(mut link) => {
                let to = names.get(at).map_or("", String::as_str);
                if last_reason.is_some() {
                    log::debug!("connected {to}");
                } else if failures > 0 {
                    log::info!("connected {to} after {failures} failed attempts");
                } else {
                    log::info!("connected {to}");
                }
                failures = 0;
                last_warn = None;
                backoff = BACKOFF_MIN;
                let mut progressed = false;
                let mut on = Session {
                    flush_deadline: &mut flush_deadline,
                    progressed: &mut progressed,
                    others: n > 1,
                    failback,
                    elsewhere: acked_by.is_some_and(|i| i != at),
                };
                let result = session(shared, &mut link, &mut on);
                if progressed {
                    acked_by = Some(at);
                }
                if let Ok(()) = result {
                    return;
                }
                let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                if e == FAILING_BACK {
                    log::info!(
                        "trying the first collector again after {} s on {to}",
                        failback.unwrap_or_default().as_secs()
                    );
                    at = 0;
                    continue;
                }
                if progressed {
                    if n > 1 {
                        next(&mut at, &format!("link to {to} lost: {e}"), true);
                    } else {
                        log::warn!("link lost: {e}");
                    }
                    refused = NO_PROGRESS_MIN;
                    last_reason = None;
                    continue;
                }
                if shared.stop.load(Ordering::SeqCst) {
                    if n > 1 {
                        at = (at + 1) % n;
                    }
                    continue;
                }
                // Another collector may take what this one refuses: the
                // wait is for a round that made no progress anywhere.
                let loud = last_reason.is_none();
                if n > 1 && next(&mut at, &format!("{to} acknowledged nothing ({e})"), loud) {
                    continue;
                }
                let wait = jitter(refused);
                // Said once when the sessions start ending like this, and
                // when the collector states a new reason; not per attempt,
                // nor when only the socket error differs, nor for a socket
                // error after a stated reason (the collector states it and
                // closes, and the close can reach a write of ours first).
                let stated = [REFUSED_PENDING, REFUSED_REVOKED].contains(&e.as_str());
                let changed = stated && last_reason.as_ref().is_some_and(|l| l != &e);
                if last_reason.is_none() || changed {
                    if stated {
                        log::warn!(
                            "{e}: retrying with backoff up to {} s",
                            NO_PROGRESS_MAX.as_secs()
                        );
                    } else {
                        log::warn!(
                            "the collector ended the session before acknowledging anything ({e}): \
                             retrying with backoff up to {} s",
                            NO_PROGRESS_MAX.as_secs()
                        );
                    }
                    last_reason = Some(e);
                } else {
                    log::debug!("session ended without progress again: retrying in {wait:?}");
                }
                shared.back_off(wait);
                refused = (refused * 2).min(NO_PROGRESS_MAX);
            }
            Err(e) => {
                failures += 1;
                let stopping = shared.stop.load(Ordering::SeqCst);
                let loud = last_warn.is_none_or_elapsed(Duration::from_secs(60));
                if n > 1 && next(&mut at, &format!("cannot reach the collector: {e}"), loud) {
                    if loud {
                        last_warn = Some(Instant::now());
                    }
                    continue;
                }
                if stopping {
                    log::warn!("stopping without a collector to flush to: {e}");
                    return;
                }
                // The first failure, then at most once a minute: a down
                // collector must not flood the log.
                if last_warn.is_none_or_elapsed(Duration::from_secs(60)) {
                    log::warn!("cannot reach the collector ({failures} attempts): {e}");
                    last_warn = Some(Instant::now());
                }
                shared.sleep(jitter(backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What one session needs from the link loop, and tells it.
struct Session<'a> {
    flush_deadline: &'a mut Option<Instant>,
    /// Set when an ack released any frame.
    progressed: &'a mut bool,
    /// Other collectors are configured: one that stops acknowledging is
    /// left after `ACK_SILENCE` instead of being waited on.
    others: bool,
    /// On a failover collector: how long before trying the first again.
    failback: Option<Duration>,
    /// Another collector acknowledged frames of this boot since this one
    /// last did: it gets the Hello again and a Gap naming them `Elsewhere`.
    elsewhere: bool,
}

/// One connection: resend everything unacked, then send new frames as they
/// come and apply acks. `Ok` means stopped cleanly; `Err` means reconnect.
fn session(shared: &Shared, link: &mut Link, on: &mut Session<'_>) -> std::io::Result<()> {
    let flush_deadline = &mut *on.flush_deadline;
    let progressed = &mut *on.progressed;
    let started = Instant::now();
    let (device, boot, hello) = {
        let mut st = shared.lock();
        st.queue.rewind();
        while st.report_gap("while disconnected") {}
        let hello = if on.elsewhere {
            st.announce_elsewhere()
        } else {
            None
        };
        (st.signer.device, st.signer.boot, hello)
    };
    link.write_all(&[0])?; // end whatever garbage preceded us on the line
    if let Some(h) = hello {
        let wire = to_wire(&h).ok_or_else(|| std::io::Error::other("frame too large"))?;
        link.write_all(&wire)?;
    }
    let mut out = Vec::with_capacity(vigil_protocol::MAX_FRAME_LEN);
    let mut rbuf = [0u8; 512];
    let mut acks = FrameDecoder::<{ vigil_protocol::frame::MAX_DOWNLINK_LEN }>::new();
    let mut progress = Instant::now();
    // The last ack that released a frame, or the last moment nothing was
    // outstanding: what `ACK_SILENCE` runs from.
    let mut acked_at = Instant::now();
    let mut resend_after = RESEND_AFTER;
    loop {
        // The flush budget runs from the stop request, whatever this
        // session is doing when it comes.
        if shared.stop.load(Ordering::SeqCst) {
            let deadline = *flush_deadline.get_or_insert_with(|| shared.flush_deadline());
            if shared.lock().queue.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
        }
        loop {
            if flush_deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let seq = shared.lock().queue.next_to_send(&mut out);
            let Some(seq) = seq else { break };
            let wire = to_wire(&out).ok_or_else(|| std::io::Error::other("frame too large"))?;
            if let Some(d) = *flush_deadline {
                link.set_write_timeout(
                    d.saturating_duration_since(Instant::now())
                        .min(crate::link::WRITE_TIMEOUT),
                );
            }
            link.write_all(&wire).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    std::io::Error::other(format!(
                        "the collector took nothing for {} s (hung or overloaded): reconnecting",
                        crate::link::WRITE_TIMEOUT.as_secs()
                    ))
                }
                _ => e,
            })?;
            log::trace!("sent frame {seq}");
        }
        let n = link.poll_read(&mut rbuf)?;
        let mut input = rbuf.get(..n).unwrap_or(&[]);
        while let Some(r) = acks.feed(&mut input) {
            match r.ok().map(Downlink::decode) {
                Some(Ok(Downlink::Status(st))) if st.device == device => {
                    // Advisory only (the collector commands nothing): why
                    // the session ends, so the agent waits politely.
                    return Err(std::io::Error::other(match st.standing {
                        Standing::Pending => REFUSED_PENDING,
                        Standing::Revoked => REFUSED_REVOKED,
                    }));
                }
                Some(Ok(Downlink::Status(st))) => {
                    log::warn!("ignored a status for device {}", st.device);
                }
                Some(Ok(Downlink::Ack(a))) if a.device == device && a.boot == boot => {
                    let released = shared.lock().queue.ack(a.seq);
                    log::debug!("ack {}: {released} frames released", a.seq);
                    if released > 0 {
                        progress = Instant::now();
                        acked_at = progress;
                        resend_after = RESEND_AFTER;
                        *progressed = true;
                    }
                }
                Some(Ok(Downlink::Ack(a))) => {
                    log::warn!("ignored an ack for device {} boot {}", a.device, a.boot);
                }
                Some(Err(vigil_protocol::DecodeError::Checksum)) => {
                    log::warn!("ignored a damaged ack (its CRC does not match)");
                }
                _ => log::warn!("ignored an unreadable message from the collector"),
            }
        }
        {
            let mut st = shared.lock();
            let outstanding = st.queue.stats().frames;
            if on.others && outstanding > 0 && acked_at.elapsed() >= ACK_SILENCE {
                return Err(std::io::Error::other(format!(
                    "no acknowledgement for {} s with {outstanding} frames outstanding \
                     (a hung or overloaded collector)",
                    ACK_SILENCE.as_secs()
                )));
            }
            // Failing back waits for a moment with nothing outstanding (a
            // minute at most): the first collector then gets no resend.
            if on.failback.is_some_and(|f| {
                let on_for = started.elapsed();
                on_for >= f && (outstanding == 0 || on_for >= f + Duration::from_secs(60))
            }) {
                return Err(std::io::Error::other(FAILING_BACK));
            }
            if outstanding == 0 {
                progress = Instant::now();
                acked_at = progress;
            } else if progress.elapsed() >= resend_after {
                log::info!(
                    "no ack progress for {} s: sending the {outstanding} unacknowledged frames again",
                    resend_after.as_secs()
                );
                // Frames evicted while the collector acknowledged nothing
                // (its disk full, say) are named now, on this connection:
                // its cumulative ack cannot move past a hole no Gap names.
                while st.report_gap("while unacknowledged") {}
                st.queue.rewind();
                progress = Instant::now();
                resend_after = (resend_after * 2).min(RESEND_MAX);
            }
        }
        if shared.reconnect.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("configuration changed"));
        }
        if shared.stop.load(Ordering::SeqCst) {
            let deadline = *flush_deadline.get_or_insert_with(|| shared.flush_deadline());
            if shared.lock().queue.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TestClock;
    use vigil_protocol::body::Change;
    use vigil_protocol::SignedFrame;

    fn shared() -> Shared {
        Shared {
            state: Mutex::new(State {
                queue: Queue::new(),
                signer: Signer {
                    key: SigningKey::from_bytes(&[7; 32]),
                    device: DeviceId::of(&SigningKey::from_bytes(&[7; 32]).verifying_key()),
                    boot: 1,
                    next_seq: 0,
                    clock: Clock::new(None),
                },
                hello: None,
            }),
            config: Mutex::new(Config::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            stopped_at: Mutex::new(None),
            reconnect: AtomicBool::new(false),
        }
    }

    fn entry(i: u32) -> sockets::Entry {
        sockets::Entry {
            kind: 1,
            proto: 0,
            local: (vec![10, 0, 0, 2], 0),
            remote: Some((i.to_be_bytes().to_vec(), 443)),
            uid: 0,
            process: "dicomd".into(),
        }
    }

    /// Sends what the queue holds (as the link does), acks it all and
    /// returns the sequence numbers and the socket changes it carried.
    fn drain(sh: &Shared) -> (Vec<u64>, Vec<(Change, u32)>) {
        let vk = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut st = sh.lock();
        let (mut seqs, mut changes) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while let Some(seq) = st.queue.next_to_send(&mut out) {
            seqs.push(seq);
            let f = SignedFrame::parse(&out).unwrap().verify(&vk).unwrap();
            if let Body::Sockets(s) = f.body().unwrap() {
                for c in &s.changes {
                    let vigil_protocol::body::Addr::V4(b) = c.remote.unwrap().addr else {
                        panic!("v4");
                    };
                    changes.push((c.change, u32::from_be_bytes(b)));
                }
            }
        }
        if let Some(&last) = seqs.last() {
            st.queue.ack(last);
        }
        (seqs, changes)
    }

    #[test]
    fn a_socket_table_larger_than_the_queue_goes_over_several_reads_whole_and_in_order() {
        let sh = shared();
        let mut told = Told::default();
        let table: BTreeSet<_> = (0..4096).map(entry).collect();
        let (mut seqs, mut added) = (Vec::new(), BTreeSet::new());
        let mut reads = 0;
        while told.table.as_ref() != Some(&table) {
            reads += 1;
            assert!(reads < 100, "never converged");
            report_sockets(&sh, &mut told, &table);
            let (bytes, frames) = sh.lock().queue.security_room();
            assert!(
                bytes >= SOCKETS_RESERVE.0 - vigil_protocol::MAX_FRAME_LEN
                    && frames >= SOCKETS_RESERVE.1 - 1,
                "the reserve was used: {bytes} B, {frames} frames"
            );
            let (s, c) = drain(&sh);
            seqs.extend(s);
            for (change, i) in c {
                assert_eq!(change, Change::Added);
                assert!(added.insert(i), "{i} sent twice");
            }
        }
        assert!(reads > 2, "the table fitted at once: {reads}");
        assert!(!told.waiting);
        assert_eq!(added.len(), 4096);
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "no holes");
        // Half of it changes: only that is sent, then nothing.
        let next: BTreeSet<_> = (2048..6144).map(entry).collect();
        let mut changes = Vec::new();
        while told.table.as_ref() != Some(&next) {
            report_sockets(&sh, &mut told, &next);
            changes.extend(drain(&sh).1);
        }
        assert_eq!(changes.len(), 4096);
        assert_eq!(
            changes.iter().filter(|c| c.0 == Change::Removed).count(),
            2048
        );
        report_sockets(&sh, &mut told, &next);
        assert!(drain(&sh).0.is_empty());
    }

    /// A long outage: hourly posture reports fill the security ring. What
    /// does not fit is lost, but every lost frame keeps its sequence number
    /// and the Gaps made at the reconnect name each one, by kind: the
    /// collector sees exactly what is missing.
    #[test]
    fn security_frames_refused_by_a_full_ring_are_named_in_a_gap() {
        use vigil_protocol::body::{CheckResult, CheckStatus, Posture};
        let sh = shared();
        // About 1 KB, as a real pass's posture report is 1 to 2 KB.
        let posture = || {
            let check = CheckResult {
                id: "ssh.password-auth".try_into().unwrap(),
                title: "t".repeat(60).as_str().try_into().unwrap(),
                status: CheckStatus::Fail,
                evidence: "e".repeat(100).as_str().try_into().unwrap(),
            };
            Body::Posture(Posture {
                continued: false,
                results: std::iter::repeat(check).take(6).collect(),
            })
        };
        let sessions = || {
            Body::Sessions(vigil_protocol::body::Sessions {
                snapshot: false,
                continued: false,
                events: heapless::Vec::new(),
            })
        };
        // Posture and session reports in turn, as a real outage has
        // several kinds (a Gap names one kind).
        let reports = 80;
        for i in 0..reports {
            sh.lock()
                .put(if i % 2 == 0 { posture() } else { sessions() }, 0);
        }
        let made = sh.lock().signer.next_seq;
        assert_eq!(made, reports, "every report spent a sequence number");
        // The link comes back: the session start makes the pending Gaps.
        {
            let mut st = sh.lock();
            st.queue.rewind();
            while st.report_gap("while disconnected") {}
        }
        let vk = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut st = sh.lock();
        let (mut queued, mut named) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while let Some(seq) = st.queue.next_to_send(&mut out) {
            let f = SignedFrame::parse(&out).unwrap().verify(&vk).unwrap();
            match f.body().unwrap() {
                Body::Posture(_) | Body::Sessions(_) => queued.push(seq),
                Body::Gap(g) => {
                    use vigil_protocol::body::BodyKind;
                    assert!(matches!(g.kind, BodyKind::Posture | BodyKind::Sessions));
                    for r in &g.ranges {
                        named.extend(r.first..r.first + r.count);
                    }
                }
                b => panic!("{b:?}"),
            }
        }
        assert!(
            !named.is_empty() && !queued.is_empty(),
            "{queued:?} {named:?}"
        );
        let mut all: Vec<u64> = queued.iter().chain(&named).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..reports).collect::<Vec<_>>(),
            "each report queued or named, once"
        );
    }

    #[test]
    fn the_test_clock_starts_where_told_and_runs_faster() {
        let t = TestClock::parse("1000000:1000");
        assert_eq!(
            t,
            Some(TestClock {
                start_ms: 1_000_000,
                factor: 1000
            })
        );
        for bad in ["1000", "x:10", "5:0", "5:100001", "-1:10"] {
            assert_eq!(TestClock::parse(bad), None, "{bad}");
        }
        let c = Clock::new(t);
        let now = c.now_ms();
        assert!((1_000_000..1_000_000 + 60_000).contains(&now), "{now}");
        assert_eq!(c.real(Duration::from_secs(1)), Duration::from_millis(1));
        assert_eq!(c.scaled_ms(Duration::from_millis(3)), 3000);
        let wall = Clock::new(None);
        assert_eq!(wall.real(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(wall.now_ms().abs_diff(now_ms()) < 1000);
    }
}
