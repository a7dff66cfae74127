//! Ingest: byte streams from agents (TLS, plain TCP, serial) to verified
//! frames for the writer, and acks back. `Session` is the sans-I/O core
//! (decode, check who sent it, verify, keep per-connection order); the
//! drivers below move bytes; they never touch the archive. `tls` is the
//! listener's identity, `writer` the one task that stores what sessions
//! verified, runs detection and raises alerts, and answers with acks once
//! the transaction is durable.

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
    unknown: Mutex<(Instant, u32)>,
    /// When each refused key's alert was last raised: a revoked agent that
    /// reconnects in a loop updates its alert once a minute, not once per
    /// attempt (every refusal is still counted in the metrics).
    refused: Mutex<HashMap<DeviceId, Instant>>,
}

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
            unknown: Mutex::new((Instant::now(), 0)),
            refused: Mutex::new(HashMap::new()),
        }
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

    /// Counts one unknown-device attempt; `false` beyond the per-minute limit.
    fn unknown_allowed(&self) -> bool {
        let mut u = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        if u.0.elapsed() >= Duration::from_secs(60) {
            *u = (Instant::now(), 0);
        }
        u.1 = u.1.saturating_add(1);
        u.1 <= self.limits.unknown_per_minute
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
                    if !ctx.unknown_allowed() {
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
    loop {
        if *stop.borrow() {
            break;
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
        if let Some(pause) = pace.take(frames) {
            ctx.metrics.reject("rate_limited");
            tokio::time::sleep(pause).await;
        }
    }
    let _ = s.shutdown().await;
}

/// Counts an open connection; decrements on drop.
pub struct Open(Arc<Metrics>);

impl Open {
    /// `None` at the connection limit.
    pub fn try_new(ctx: &Ctx) -> Option<Open> {
        let m = &ctx.metrics;
        let n = m.connections_open.fetch_add(1, Relaxed);
        if usize::try_from(n).unwrap_or(usize::MAX) >= ctx.limits.max_connections {
            m.connections_open.fetch_sub(1, Relaxed);
            m.connections_refused.fetch_add(1, Relaxed);
            return None;
        }
        m.connections_total.fetch_add(1, Relaxed);
        Some(Open(Arc::clone(m)))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
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
    loop {
        let mut stop_rx = stop.clone();
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_rx.changed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(open) = Open::try_new(&ctx) else {
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
