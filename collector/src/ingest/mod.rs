//! Ingest: byte streams from agents (TLS, plain TCP, serial) to verified
//! frames for the writer, and acks back. `Session` is the sans-I/O core
//! (decode, check who sent it, verify, keep per-connection order); the
//! drivers below move bytes; they never touch the archive. `tls` is the
//! listener's identity, `writer` the one task that stores what sessions
//! verified, runs detection and raises alerts, and answers with acks once
//! the transaction is durable.

pub mod ledger;
pub mod skew;
pub mod tls;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use vigil_protocol::body::Hello;
use vigil_protocol::cobs::{FrameDecoder, FrameError};
use vigil_protocol::replay::ConnectionOrder;
use vigil_protocol::{
    to_wire, Ack, BodyKind, DeviceId, Downlink, SignedFrame, Standing, VerifiedBuf, VerifyingKey,
    MAX_FRAME_LEN,
};

use crate::alert::{self, Raise};
use crate::clock::now_ms;
use crate::config::Limits;
use crate::ingest::writer::{Job, Reply};
use crate::metrics::Metrics;
use crate::store::registry::Registry;
use crate::store::DeviceState;

/// What every connection shares.
pub struct Ctx {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub jobs: mpsc::Sender<Job>,
    pub limits: Limits,
    unknown: Mutex<Unknown>,
    /// When each refused key's alert was last raised: a revoked agent that
    /// reconnects in a loop updates its alert once a minute, not once per
    /// attempt (every refusal is still counted in the metrics).
    refused: Mutex<HashMap<DeviceId, Instant>>,
    /// Each device's frames and bytes in the current second, over all its
    /// connections (`device_frames_per_s`, `device_bytes_per_s`).
    budgets: Mutex<HashMap<DeviceId, Budget>>,
    /// Connections open per address (`max_connections_per_address`).
    per_address: Arc<Mutex<HashMap<String, u32>>>,
}

/// One device's use of its budget in the current one-second window.
struct Budget {
    window: Instant,
    frames: u32,
    bytes: u64,
    /// When `device.flood` was last raised for it.
    alerted: Option<Instant>,
}

/// Devices whose budgets are tracked; beyond, idle ones are forgotten.
const BUDGETS: usize = 65_536;
/// `device.flood` is raised again at most this often per device.
const FLOOD_RAISE_EVERY: Duration = Duration::from_secs(60);

/// Hello checks for keys nobody enrolled, in the current minute.
struct Unknown {
    window: Instant,
    /// Charged to the shared budget (`unknown_per_minute`).
    shared: u32,
    /// Addresses' first attempts of the minute (outside the shared budget,
    /// up to ten times it).
    firsts: u32,
    refused: u32,
    by_address: HashMap<String, u32>,
    /// The pressure alert was raised in this window.
    alerted: bool,
}

/// Addresses counted per minute; beyond, new ones share the budget only.
const UNKNOWN_ADDRESSES: usize = 4096;

pub use crate::store::address_of;

/// A refused key's alert is raised again at most this often.
const REFUSED_RAISE_EVERY: Duration = Duration::from_secs(60);
/// Keys remembered for that; beyond, the oldest are forgotten.
const REFUSED_KEYS: usize = 4096;

impl Ctx {
    pub fn new(
        registry: Registry,
        metrics: Arc<Metrics>,
        jobs: mpsc::Sender<Job>,
        limits: Limits,
    ) -> Ctx {
        Ctx {
            registry,
            metrics,
            jobs,
            limits,
            unknown: Mutex::new(Unknown {
                window: Instant::now(),
                shared: 0,
                firsts: 0,
                refused: 0,
                by_address: HashMap::new(),
                alerted: false,
            }),
            refused: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            per_address: Arc::default(),
        }
    }

    /// How long a connection of `device` must wait before it reads again:
    /// `None` while the device is within its budget. Checked before each
    /// read, so a device on many connections takes at most one read each
    /// beyond its budget, and pays that off in the seconds after.
    fn device_wait(&self, device: DeviceId) -> Option<Duration> {
        let (fl, bl) = (
            self.limits.device_frames_per_s,
            self.limits.device_bytes_per_s,
        );
        let mut all = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = all.get_mut(&device)?;
        let now = Instant::now();
        let secs = now.duration_since(b.window).as_secs();
        if secs > 0 {
            b.window += Duration::from_secs(secs);
            let k = u32::try_from(secs).unwrap_or(u32::MAX);
            b.frames = b.frames.saturating_sub(fl.saturating_mul(k));
            b.bytes = b.bytes.saturating_sub(bl.saturating_mul(secs));
        }
        (b.frames >= fl || b.bytes >= bl)
            .then(|| Duration::from_secs(1).saturating_sub(now.duration_since(b.window)))
    }

    /// Charges `frames` and `bytes` to `device`'s budget; how long its
    /// connection must pause when the device is over it (all its
    /// connections share one budget). The first excess of a minute raises
    /// `device.flood`.
    fn device_budget(
        &self,
        device: DeviceId,
        frames: usize,
        bytes: usize,
        peer: &str,
        now_ms: u64,
    ) -> Option<Duration> {
        let (fl, bl) = (
            self.limits.device_frames_per_s,
            self.limits.device_bytes_per_s,
        );
        let mut all = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if all.len() >= BUDGETS && !all.contains_key(&device) {
            all.retain(|_, b| now.duration_since(b.window) < Duration::from_secs(2));
        }
        let b = all.entry(device).or_insert(Budget {
            window: now,
            frames: 0,
            bytes: 0,
            alerted: None,
        });
        // Each second that began pays one budget off what was taken: what
        // went over (frames already read when the budget ran out, on every
        // connection of the device) is owed to the next seconds, so over
        // time the device gets its budget, no more.
        let secs = now.duration_since(b.window).as_secs();
        if secs > 0 {
            b.window += Duration::from_secs(secs);
            let k = u32::try_from(secs).unwrap_or(u32::MAX);
            b.frames = b.frames.saturating_sub(fl.saturating_mul(k));
            b.bytes = b.bytes.saturating_sub(bl.saturating_mul(secs));
        }
        b.frames = b
            .frames
            .saturating_add(u32::try_from(frames).unwrap_or(u32::MAX));
        b.bytes = b
            .bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        if b.frames <= fl && b.bytes <= bl {
            return None;
        }
        // Paused to the second's end; `device_wait` holds every connection
        // of the device before its next read while it still owes.
        let pause = Duration::from_secs(1).saturating_sub(now.duration_since(b.window));
        log::debug!(
            "device {device} over its budget ({} frames, {} bytes owed this second): its connection from {peer} waits {pause:?}",
            b.frames,
            b.bytes
        );
        let raise = b
            .alerted
            .map_or(true, |t| now.duration_since(t) >= FLOOD_RAISE_EVERY);
        if raise {
            b.alerted = Some(now);
            let ev = json!({"peer": peer, "frames_in_second": b.frames, "bytes_in_second": b.bytes,
                            "device_frames_per_s": fl, "device_bytes_per_s": bl,
                            "expected": format!("at most {fl} frames and {bl} bytes a second"),
                            "seen": format!("{} frames, {} bytes within a second: its connections are slowed", b.frames, b.bytes)});
            drop(all);
            self.raise(Raise::new(alert::FLOOD, device.to_string(), "", ev, now_ms));
        }
        Some(pause)
    }

    /// Whether a refusal of `device` now should raise (update) its alert.
    fn refusal_alerted(&self, device: DeviceId) -> bool {
        let mut r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if r.get(&device)
            .is_some_and(|t| now.duration_since(*t) < REFUSED_RAISE_EVERY)
        {
            return false;
        }
        if r.len() >= REFUSED_KEYS {
            r.retain(|_, t| now.duration_since(*t) < REFUSED_RAISE_EVERY);
            if r.len() >= REFUSED_KEYS {
                r.clear();
            }
        }
        r.insert(device, now);
        true
    }

    /// Counts one unknown-device attempt from `peer`; `false` when it is
    /// beyond its address's budget or the shared one. An address's first
    /// attempt of a minute is allowed whatever the others did (up to ten
    /// times the shared budget), so a flood from some addresses cannot keep
    /// a genuine new device from showing as pending. The first refusal of
    /// a minute raises `enrollment.unknown-pressure`.
    fn unknown_allowed(&self, peer: &str, now_ms: u64) -> bool {
        let limits = &self.limits;
        let mut u = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        if u.window.elapsed() >= Duration::from_secs(60) {
            u.window = Instant::now();
            (u.shared, u.firsts, u.refused, u.alerted) = (0, 0, 0, false);
            u.by_address.clear();
        }
        let addr = address_of(peer);
        let room = u.by_address.len() < UNKNOWN_ADDRESSES;
        let n = match u.by_address.get_mut(addr) {
            Some(c) => {
                *c = c.saturating_add(1);
                Some(*c)
            }
            None if room => {
                u.by_address.insert(addr.to_string(), 1);
                Some(1)
            }
            None => None,
        };
        let allowed = match n {
            Some(1) => {
                u.firsts = u.firsts.saturating_add(1);
                u.firsts <= limits.unknown_per_minute.saturating_mul(10)
            }
            Some(n) if n > limits.unknown_per_address_per_minute => false,
            _ => {
                u.shared = u.shared.saturating_add(1);
                u.shared <= limits.unknown_per_minute
            }
        };
        if !allowed {
            u.refused = u.refused.saturating_add(1);
            if !u.alerted {
                u.alerted = true;
                let mut top: Vec<(&String, &u32)> = u.by_address.iter().collect();
                top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let top: Vec<serde_json::Value> = top
                    .iter()
                    .take(5)
                    .map(|(a, n)| json!({"address": a, "attempts": n}))
                    .collect();
                let ev = json!({
                    "peer": peer, "addresses": u.by_address.len(), "top": top,
                    "unknown_per_minute": limits.unknown_per_minute,
                    "unknown_per_address_per_minute": limits.unknown_per_address_per_minute,
                    "expected": "a few Hellos a minute from keys nobody enrolled",
                    "seen": format!("{} unknown-key attempts this minute, refused from here on beyond the budgets",
                                    u.shared.saturating_add(u.firsts)),
                });
                drop(u);
                self.raise(Raise::new(alert::UNKNOWN_PRESSURE, "", "", ev, now_ms));
            }
        }
        allowed
    }

    /// Hands an alert to the writer without waiting; when the writer is
    /// saturated the occurrence is dropped (it is counted in the metrics).
    fn raise(&self, r: Raise) {
        let _ = self.jobs.try_send(Job::Raise(r));
    }
}

/// The result of feeding bytes to a session.
#[derive(Default)]
pub struct Fed {
    pub device: Option<DeviceId>,
    pub frames: Vec<VerifiedBuf>,
    pub pending: Option<(VerifyingKey, Box<Hello>)>,
    /// Told to the device before the close: it is pending or revoked.
    pub status: Option<vigil_protocol::Status>,
    pub raises: Vec<Raise>,
    /// The peer must be disconnected after this.
    pub close: bool,
}

/// Alerts one connection may raise (further rejections are only counted).
const MAX_RAISES_PER_CONNECTION: u32 = 8;

pub struct Session {
    decoder: Box<FrameDecoder<MAX_FRAME_LEN>>,
    order: ConnectionOrder,
    device: Option<DeviceId>,
    peer: Arc<str>,
    raised: u32,
    /// A serial line: bytes can be damaged on the way (TLS rules that out
    /// on TCP), and there is no connection to close.
    line: bool,
}

impl Session {
    pub fn new(peer: Arc<str>) -> Session {
        Session {
            decoder: Box::new(FrameDecoder::new()),
            order: ConnectionOrder::default(),
            device: None,
            peer,
            raised: 0,
            line: false,
        }
    }

    /// A session on a serial line.
    pub fn on_line(peer: Arc<str>) -> Session {
        Session {
            line: true,
            ..Session::new(peer)
        }
    }

    /// On a line that already carries a verified device, a frame naming
    /// another device that does not verify as that device is damaged (a
    /// flipped or inserted byte in its header), not a second sender.
    fn damaged(line: bool, device: Option<DeviceId>, sf: &SignedFrame<'_>, ctx: &Ctx) -> bool {
        let h = sf.header();
        line && device.is_some_and(|d| d != h.device)
            && !matches!(ctx.registry.get(&h.device), Some((key, _)) if sf.verify(&key).is_ok())
    }

    /// Frames that ended on this connection so far, good or not: what a
    /// connection must keep producing to stay open.
    pub fn completed(&self) -> u64 {
        let s = self.decoder.stats();
        s.frames + s.corrupt + s.oversize
    }

    /// The frame being received is already over the maximum size.
    pub fn in_oversize_frame(&self) -> bool {
        self.decoder.in_oversize_frame()
    }

    fn raise(&mut self, fed: &mut Fed, r: Raise) {
        if self.raised < MAX_RAISES_PER_CONNECTION {
            self.raised += 1;
            fed.raises.push(r);
        }
    }

    /// Decodes and verifies the complete frames in `input`, consuming it;
    /// when the result says `close`, what is left of `input` was not read.
    pub fn feed(&mut self, input: &mut &[u8], ctx: &Ctx) -> Fed {
        let mut fed = Fed::default();
        let m = &ctx.metrics;
        while let Some(r) = self.decoder.feed(input) {
            m.frames_received.fetch_add(1, Relaxed);
            let bytes = match r {
                Ok(b) => b,
                Err(FrameError::Oversize) => {
                    reject(m, &self.peer, "oversize", None);
                    continue;
                }
                Err(_) => {
                    reject(m, &self.peer, "corrupt", None);
                    continue;
                }
            };
            if bytes.len() > ctx.limits.max_frame_bytes {
                reject(m, &self.peer, "oversize", None);
                continue;
            }
            let Ok(sf) = SignedFrame::parse(bytes) else {
                reject(m, &self.peer, "corrupt", None);
                continue;
            };
            let h = *sf.header();
            let now = now_ms();
            if Session::damaged(self.line, self.device, &sf, ctx) {
                reject(m, &self.peer, "corrupt", Some(&h));
                continue;
            }
            if self.device.is_some_and(|d| d != h.device) {
                reject(m, &self.peer, "wrong_device", Some(&h));
                let ev = json!({"peer": &*self.peer, "claimed": h.device.to_string(),
                                "expected": "one device per connection", "seen": "a second device id"});
                self.raise(
                    &mut fed,
                    Raise::new(
                        alert::REPLAY,
                        self.device.map(|d| d.to_string()).unwrap_or_default(),
                        "mixed-devices",
                        ev,
                        now,
                    ),
                );
                fed.close = true;
                break;
            }
            match ctx.registry.get(&h.device) {
                Some((key, DeviceState::Approved)) => match sf.verify(&key) {
                    Ok(v) => {
                        if let Some(seen) = out_of_range(&h) {
                            reject(m, &self.peer, "out_of_range", Some(&h));
                            let ev = json!({"peer": &*self.peer, "boot": h.boot, "seq": h.seq, "time_ms": h.time_ms,
                                            "expected": format!("a sequence number up to 2^63-1 and a time before {}", alert::rfc3339(MAX_TIME_MS)),
                                            "seen": seen});
                            self.raise(
                                &mut fed,
                                Raise::new(alert::OUT_OF_RANGE, h.device.to_string(), "", ev, now),
                            );
                            continue;
                        }
                        if !self.order.admit(&h) {
                            reject(m, &self.peer, "replay", Some(&h));
                            let ev = json!({"peer": &*self.peer, "boot": h.boot, "seq": h.seq,
                                            "expected": "no older boot after a newer one on a connection",
                                            "seen": "a frame of an older boot spliced into the stream"});
                            self.raise(
                                &mut fed,
                                Raise::new(
                                    alert::REPLAY,
                                    h.device.to_string(),
                                    "connection-order",
                                    ev,
                                    now,
                                ),
                            );
                            continue;
                        }
                        self.device = Some(h.device);
                        fed.device = Some(h.device);
                        fed.frames.push(v.to_buf());
                    }
                    Err(_) => {
                        reject(m, &self.peer, "bad_signature", Some(&h));
                        let ev = json!({"peer": &*self.peer, "boot": h.boot, "seq": h.seq,
                                        "expected": "a signature by the enrolled key", "seen": "a signature that does not verify"});
                        self.raise(
                            &mut fed,
                            Raise::new(alert::BAD_SIGNATURE, h.device.to_string(), "", ev, now),
                        );
                    }
                },
                Some((_, DeviceState::Revoked)) => {
                    reject(m, &self.peer, "revoked_device", Some(&h));
                    fed.status = Some(status(h.device, Standing::Revoked));
                    if ctx.refusal_alerted(h.device) {
                        let ev = json!({"peer": &*self.peer, "expected": "no frames from a revoked key", "seen": "a connection from it"});
                        self.raise(
                            &mut fed,
                            Raise::new(alert::REVOKED_DEVICE, h.device.to_string(), "", ev, now),
                        );
                    }
                    fed.close = true;
                    break;
                }
                Some((_, DeviceState::Pending)) => {
                    // Visible, not trusted: nothing stored or acked until a
                    // person approves; the agent keeps its frames and
                    // resends them after approval.
                    reject(m, &self.peer, "pending_device", Some(&h));
                    fed.status = Some(status(h.device, Standing::Pending));
                    fed.close = true;
                    break;
                }
                None => {
                    reject(m, &self.peer, "unknown_device", Some(&h));
                    if !ctx.unknown_allowed(&self.peer, now) {
                        fed.close = true;
                        break;
                    }
                    let is_hello = sf.kind() == Some(BodyKind::Hello);
                    match is_hello.then(|| sf.verify_hello()) {
                        Some(Ok((_, key, hello))) => {
                            fed.pending = Some((key, Box::new(hello)));
                            fed.status = Some(status(h.device, Standing::Pending));
                        }
                        _ => {
                            let ev = json!({"peer": &*self.peer, "claimed": h.device.to_string(),
                                            "expected": "an enrolled device or a self-signed Hello",
                                            "seen": if is_hello { "a Hello that is not self-signed" } else { "frames from an unknown key" }});
                            self.raise(
                                &mut fed,
                                Raise::new(alert::UNKNOWN_DEVICE, "", "", ev, now),
                            );
                        }
                    }
                    fed.close = true;
                    break;
                }
            }
        }
        fed
    }
}

/// The latest frame time the archive holds: 9999-12-31T23:59:59.999Z
/// (RFC 3339 and SQLite's date functions end there).
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// Why a verified frame cannot be archived as it is: SQLite integers are
/// i64, so a larger sequence number would be clamped and collide with
/// another frame's (and break `audit` for ever), and a time past year 9999
/// has no calendar form. `None` when it fits.
pub fn out_of_range(h: &vigil_protocol::Header) -> Option<String> {
    if i64::try_from(h.seq).is_err() {
        Some(format!("sequence number {} beyond 2^63-1", h.seq))
    } else if h.time_ms > MAX_TIME_MS {
        Some(format!("frame time {} ms, after the year 9999", h.time_ms))
    } else {
        None
    }
}

/// Counts a rejected frame, and says which at debug level (a noisy serial
/// line is diagnosed from these).
fn reject(m: &Metrics, peer: &str, reason: &str, h: Option<&vigil_protocol::Header>) {
    m.reject(reason);
    match h {
        Some(h) => log::debug!(
            "{peer}: frame {}/{} of {} rejected: {reason}",
            h.boot,
            h.seq,
            h.device
        ),
        None => log::debug!("{peer}: frame rejected: {reason}"),
    }
}

/// Sends a job and waits for the writer's reply; `None` if it stopped.
async fn submit(ctx: &Ctx, fed: &mut Fed, peer: &Arc<str>, received_ms: u64) -> Option<Reply> {
    if let Some((key, hello)) = fed.pending.take() {
        let (tx, rx) = oneshot::channel();
        ctx.jobs
            .send(Job::Pending {
                key,
                hello,
                peer: Arc::clone(peer),
                reply: tx,
            })
            .await
            .ok()?;
        return rx.await.ok();
    }
    let device = fed.device?;
    let frames = std::mem::take(&mut fed.frames);
    if frames.is_empty() {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    ctx.jobs
        .send(Job::Frames {
            device,
            peer: Arc::clone(peer),
            frames,
            received_ms,
            reply: tx,
        })
        .await
        .ok()?;
    rx.await.ok()
}

fn ack_wire(a: &Ack) -> Option<Vec<u8>> {
    to_wire(&a.encode()).map(|w| w.to_vec())
}

fn status(device: DeviceId, standing: Standing) -> vigil_protocol::Status {
    vigil_protocol::Status { device, standing }
}

/// A refused device's status on the wire (SPEC.md §3): it then waits
/// politely instead of taking the close for a fault.
fn status_wire(st: vigil_protocol::Status) -> Option<Vec<u8>> {
    to_wire(&Downlink::Status(st).encode()).map(|w| w.to_vec())
}

/// Paces a connection to `limit` frames per second by sleeping.
struct Pace {
    limit: u32,
    window: Instant,
    count: u32,
}

impl Pace {
    fn new(limit: u32) -> Pace {
        Pace {
            limit,
            window: Instant::now(),
            count: 0,
        }
    }

    /// How long to pause after `n` more frames.
    fn take(&mut self, n: usize) -> Option<Duration> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.count = 0;
        }
        self.count = self
            .count
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        (self.count > self.limit)
            .then(|| Duration::from_secs(1).saturating_sub(self.window.elapsed()))
    }
}

/// Serves one TCP or TLS stream until the peer leaves, stops making
/// progress, breaks a rule or the collector stops. Progress is a complete
/// frame (delimiter-ended) within `idle_timeout_s` of the last one (or of
/// the handshake): bytes alone do not count, so a peer trickling one byte
/// at a time cannot hold a connection. A frame that grows past the maximum
/// size ends the connection at once, without waiting for its delimiter.
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    peer: Arc<str>,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) {
    let mut session = Session::new(Arc::clone(&peer));
    let mut buf = vec![0u8; 16 * 1024];
    let mut pace = Pace::new(ctx.limits.frames_per_s);
    let idle = Duration::from_secs(ctx.limits.idle_timeout_s);
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut completed = 0;
    'conn: loop {
        if *stop.borrow() {
            break;
        }
        // The device's connections share its budget: none reads while it
        // owes (the idle deadline moves with the wait).
        while let Some(wait) = session.device.and_then(|d| ctx.device_wait(d)) {
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                _ = stop.changed() => break 'conn,
            }
            deadline += wait;
        }
        let n = tokio::select! {
            r = tokio::time::timeout_at(deadline, s.read(&mut buf)) => match r {
                Err(_) => { ctx.metrics.timeouts.fetch_add(1, Relaxed); break }
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => n,
            },
            _ = stop.changed() => break,
        };
        let arrived = Instant::now();
        let mut fed = session.feed(&mut buf.get(..n).unwrap_or(&[]), &ctx);
        for r in fed.raises.drain(..) {
            ctx.raise(r);
        }
        if session.completed() > completed {
            completed = session.completed();
            deadline = tokio::time::Instant::now() + idle;
        }
        if session.in_oversize_frame() {
            // Counted once, here: the frame never reaches the decoder's end.
            reject(&ctx.metrics, &peer, "oversize", None);
            log::debug!("{peer}: a frame past the maximum size, no delimiter: closing");
            break;
        }
        let frames = fed.frames.len();
        let close = fed.close;
        if fed.pending.is_some() || frames > 0 {
            let Some(reply) = submit(&ctx, &mut fed, &peer, now_ms()).await else {
                break;
            };
            if let Some(wire) = reply.ack.as_ref().and_then(ack_wire) {
                if s.write_all(&wire).await.is_err() || s.flush().await.is_err() {
                    break;
                }
                ctx.metrics.observe_ack(arrived.elapsed());
            }
        }
        if let Some(wire) = fed.status.take().and_then(status_wire) {
            let _ = s.write_all(&wire).await;
            let _ = s.flush().await;
        }
        if close {
            break;
        }
        let device_pause = session
            .device
            .filter(|_| frames > 0)
            .and_then(|d| ctx.device_budget(d, frames, n, &peer, now_ms()));
        if device_pause.is_some() {
            ctx.metrics.reject("device_rate_limited");
        }
        let pause = pace.take(frames);
        if pause.is_some() {
            ctx.metrics.reject("rate_limited");
        }
        if let Some(pause) = pause.max(device_pause) {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = s.shutdown().await;
}

/// Counts an open connection, overall and for its address; decrements on
/// drop.
pub struct Open {
    metrics: Arc<Metrics>,
    per_address: Arc<Mutex<HashMap<String, u32>>>,
    address: String,
}

impl Open {
    /// `None` at the connection limit, or at its address's.
    pub fn try_new(ctx: &Ctx, peer: &std::net::SocketAddr) -> Option<Open> {
        let m = &ctx.metrics;
        let n = m.connections_open.fetch_add(1, Relaxed);
        if usize::try_from(n).unwrap_or(usize::MAX) >= ctx.limits.max_connections {
            m.connections_open.fetch_sub(1, Relaxed);
            m.connections_refused.fetch_add(1, Relaxed);
            return None;
        }
        let address = peer.ip().to_string();
        {
            let mut per = ctx
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let c = per.entry(address.clone()).or_insert(0);
            if *c >= ctx.limits.max_connections_per_address {
                drop(per);
                m.connections_open.fetch_sub(1, Relaxed);
                m.connections_refused.fetch_add(1, Relaxed);
                return None;
            }
            *c += 1;
        }
        m.connections_total.fetch_add(1, Relaxed);
        Some(Open {
            metrics: Arc::clone(m),
            per_address: Arc::clone(&ctx.per_address),
            address,
        })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connections_open.fetch_sub(1, Relaxed);
        let mut per = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = per.get_mut(&self.address) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                per.remove(&self.address);
            }
        }
    }
}

/// Accepts TCP connections; with `tls`, each must finish a TLS 1.3
/// handshake within the handshake timeout.
pub async fn listen(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
    stop: watch::Receiver<bool>,
) {
    let mut accept_pause = Duration::ZERO;
    loop {
        let mut stop_rx = stop.clone();
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_rx.changed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: back off,
                // doubling to a second, and say so once per run.
                if accept_pause == Duration::ZERO {
                    log::warn!("accept: {e}; backing off");
                }
                accept_pause =
                    (accept_pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(accept_pause).await;
                continue;
            }
        };
        if accept_pause != Duration::ZERO {
            log::info!("accepting connections again");
            accept_pause = Duration::ZERO;
        }
        let Some(open) = Open::try_new(&ctx, &addr) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (ctx, stop, tls) = (Arc::clone(&ctx), stop.clone(), tls.clone());
        tokio::spawn(async move {
            let _open = open;
            let peer: Arc<str> = Arc::from(addr.to_string());
            match tls {
                Some(acceptor) => {
                    let hs = Duration::from_secs(ctx.limits.handshake_timeout_s);
                    match tokio::time::timeout(hs, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => drive(s, peer, ctx, stop).await,
                        Ok(Err(e)) => {
                            ctx.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                            log::debug!("TLS handshake with {peer} failed: {e}");
                        }
                        Err(_) => {
                            ctx.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                            log::debug!("TLS handshake with {peer} timed out");
                        }
                    }
                }
                None => drive(tcp, peer, ctx, stop).await,
            }
        });
    }
}

/// Reads frames from a serial port, acks written back; reopens the port
/// after errors. Runs on its own thread until `stop`.
pub fn serial(path: std::path::PathBuf, baud: u32, ctx: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let peer: Arc<str> = Arc::from(format!("serial:{}", path.display()));
    let mut warned = false;
    while !stop.load(Relaxed) {
        let port = serialport::new(path.to_string_lossy(), baud)
            .timeout(Duration::from_millis(250))
            .open();
        let mut port = match port {
            Ok(p) => {
                log::info!("reading frames from {peer} at {baud} baud");
                warned = false;
                p
            }
            Err(e) => {
                if !warned {
                    log::warn!("cannot open {peer}: {e}; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mut session = Session::on_line(Arc::clone(&peer));
        let mut buf = [0u8; 4096];
        'port: while !stop.load(Relaxed) {
            let n = match port.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => {
                    log::warn!("{peer}: {e}; reopening");
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
            };
            let arrived = Instant::now();
            let mut input = buf.get(..n).unwrap_or(&[]);
            while !input.is_empty() {
                let mut fed = session.feed(&mut input, &ctx);
                for r in fed.raises.drain(..) {
                    ctx.raise(r);
                }
                // A serial line has no connection to close: a rejected
                // sender is simply not answered, order restarts with the
                // next session, and the rest of what was read is read by it
                // (a resend behind the rejected frame is not lost).
                if fed.close {
                    session = Session::on_line(Arc::clone(&peer));
                }
                let Some(reply) = submit_blocking(&ctx, &mut fed, &peer) else {
                    return;
                };
                if let Some(wire) = reply.and_then(|r| r.ack).as_ref().and_then(ack_wire) {
                    use std::io::Write;
                    if let Err(e) = port.write_all(&wire).and_then(|()| port.flush()) {
                        log::warn!("{peer}: writing an ack: {e}; reopening");
                        break 'port;
                    }
                    ctx.metrics.observe_ack(arrived.elapsed());
                }
                if let Some(wire) = fed.status.take().and_then(status_wire) {
                    use std::io::Write;
                    let _ = port.write_all(&wire).and_then(|()| port.flush());
                }
            }
        }
    }
}

/// `submit` for the serial threads: `None` when the writer stopped,
/// `Some(None)` when there was nothing to submit.
fn submit_blocking(ctx: &Ctx, fed: &mut Fed, peer: &Arc<str>) -> Option<Option<Reply>> {
    let (tx, rx) = oneshot::channel();
    let job = if let Some((key, hello)) = fed.pending.take() {
        Job::Pending {
            key,
            hello,
            peer: Arc::clone(peer),
            reply: tx,
        }
    } else if let (Some(device), false) = (fed.device, fed.frames.is_empty()) {
        Job::Frames {
            device,
            peer: Arc::clone(peer),
            frames: std::mem::take(&mut fed.frames),
            received_ms: now_ms(),
            reply: tx,
        }
    } else {
        return Some(None);
    };
    ctx.jobs.blocking_send(job).ok()?;
    Some(rx.blocking_recv().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protocol::body::Heartbeat;
    use vigil_protocol::{Body, Frame, Header, SigningKey, VERSION};

    fn frame(key: &SigningKey, seq: u64) -> Vec<u8> {
        let header = Header {
            version: VERSION,
            device: DeviceId::of(&key.verifying_key()),
            boot: 1,
            seq,
            time_ms: 1_700_000_000_000,
        };
        let body = Body::Heartbeat(Heartbeat {
            uptime_s: seq,
            queued_frames: 0,
            queued_bytes: 0,
        });
        Frame::new(header, body).sign(key).unwrap().to_vec()
    }

    fn wire(frames: &[Vec<u8>]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| to_wire(f).unwrap().to_vec())
            .collect()
    }

    /// Two devices, both approved by `ctx`.
    fn keys() -> (SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        )
    }

    fn ctx(keys: &[&SigningKey]) -> Ctx {
        let registry = Registry::default();
        for k in keys {
            let v = k.verifying_key();
            registry.insert(DeviceId::of(&v), v, DeviceState::Approved);
        }
        let (jobs, _) = mpsc::channel(1);
        Ctx::new(registry, Arc::default(), jobs, Limits::default())
    }

    #[test]
    fn unknown_keys_are_budgeted_per_address_and_every_address_gets_a_first_try() {
        assert_eq!(address_of("10.0.0.7:40000"), "10.0.0.7");
        assert_eq!(address_of("[fd00::7]:40000"), "fd00::7");
        assert_eq!(address_of("serial:/dev/ttyUSB0"), "serial:/dev/ttyUSB0");
        let (jobs, mut alerts) = mpsc::channel(16);
        let limits = Limits {
            unknown_per_minute: 6,
            unknown_per_address_per_minute: 3,
            ..Limits::default()
        };
        let c = Ctx::new(Registry::default(), Arc::default(), jobs, limits);
        // One address floods: its first three go, then it is refused.
        let flood: Vec<bool> = (0..10)
            .map(|p| c.unknown_allowed(&format!("10.0.0.66:{}", 1000 + p), 0))
            .collect();
        assert_eq!(flood.iter().filter(|a| **a).count(), 3, "{flood:?}");
        assert!(
            matches!(alerts.try_recv(), Ok(Job::Raise(r)) if r.rule.id == "enrollment.unknown-pressure")
        );
        // Many addresses exhaust the shared budget with second tries...
        for a in 0..20 {
            c.unknown_allowed(&format!("10.0.1.{a}:1"), 0);
            c.unknown_allowed(&format!("10.0.1.{a}:2"), 0);
        }
        assert!(!c.unknown_allowed("10.0.1.0:3", 0));
        // ...and still a new address's first attempt goes through.
        assert!(c.unknown_allowed("10.0.2.9:5000", 0));
        // The pressure alert is raised once a minute, not per refusal.
        assert!(alerts.try_recv().is_err());
    }

    #[test]
    fn a_device_over_its_budget_waits_on_every_connection_and_is_alerted_once() {
        let (jobs, mut alerts) = mpsc::channel(16);
        let limits = Limits {
            device_frames_per_s: 10,
            device_bytes_per_s: 1_000_000,
            ..Limits::default()
        };
        let c = Ctx::new(Registry::default(), Arc::default(), jobs, limits);
        let (d, other) = (DeviceId([1; 8]), DeviceId([2; 8]));
        assert!(c.device_budget(d, 10, 100, "a:1", 0).is_none());
        assert!(c.device_wait(d).is_some(), "at the budget: wait");
        assert!(c.device_budget(d, 5, 100, "a:2", 0).is_some());
        assert!(c.device_budget(d, 5, 100, "a:3", 0).is_some());
        assert!(matches!(alerts.try_recv(), Ok(Job::Raise(r)) if r.rule.id == "device.flood"));
        assert!(alerts.try_recv().is_err(), "once, not per excess");
        assert!(c.device_wait(other).is_none(), "another device is not held");
        assert!(c.device_budget(other, 3, 100, "b:1", 0).is_none());
    }

    /// Frame 1 with one bit of its device id flipped, as a noisy line does.
    fn damaged(key: &SigningKey) -> Vec<u8> {
        let mut f = frame(key, 1);
        f[1] ^= 0x01; // the device id follows the version byte
        f
    }

    #[test]
    fn on_a_line_a_damaged_device_id_is_a_damaged_frame_and_what_follows_is_read() {
        let (a, b) = keys();
        let ctx = ctx(&[&a, &b]);
        let bytes = wire(&[frame(&a, 0), damaged(&a), frame(&a, 2)]);
        let mut input = &bytes[..];
        let fed = Session::on_line("serial:test".into()).feed(&mut input, &ctx);
        assert!(!fed.close && fed.raises.is_empty() && input.is_empty());
        let seqs: Vec<u64> = fed.frames.iter().map(|f| f.frame().header().seq).collect();
        assert_eq!(seqs, [0, 2]);

        // The same bytes on a TLS connection (which no noise reaches): a
        // second device id is an attack, alerted, and the connection ends
        // with the rest unread.
        let mut input = &bytes[..];
        let fed = Session::new("tcp:test".into()).feed(&mut input, &ctx);
        assert!(fed.close && !input.is_empty());
        assert_eq!(fed.raises.len(), 1);
        assert_eq!(fed.raises[0].dedup, "mixed-devices");
    }

    #[test]
    fn on_a_line_a_second_genuine_device_is_alerted_and_the_rest_left_for_the_next_session() {
        let (a, b) = keys();
        let ctx = ctx(&[&a, &b]);
        let bytes = wire(&[frame(&a, 0), frame(&b, 0), frame(&b, 1)]);
        let mut input = &bytes[..];
        let mut line = Session::on_line("serial:test".into());
        let fed = line.feed(&mut input, &ctx);
        assert!(fed.close);
        assert_eq!(fed.raises.len(), 1);
        assert_eq!(fed.raises[0].dedup, "mixed-devices");
        assert_eq!(fed.frames.len(), 1);
        // What was not read yet goes to the next session (the serial
        // reader starts one after `close`), not into the void.
        let fed = Session::on_line("serial:test".into()).feed(&mut input, &ctx);
        assert_eq!(fed.device, Some(DeviceId::of(&b.verifying_key())));
        assert_eq!(fed.frames.len(), 1);
        assert!(input.is_empty());
    }
}
