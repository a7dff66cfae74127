//! A test-side collector stand-in: accepts the agent's frames over TLS 1.3
//! (a fresh self-signed certificate, pinned by the agent), plain TCP or any
//! byte stream (a pty), verifies each with the device key, records it and
//! acks the highest contiguous sequence. Policies let a test withhold acks
//! or cut connections to exercise resend. Not the product's collector.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::{to_wire, Ack, Body, SignedFrame, VerifyingKey, MAX_FRAME_LEN};

/// One verified frame as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub boot: u32,
    pub seq: u64,
    pub body: Body,
    pub wire_bytes: usize,
}

#[derive(Default)]
pub struct Log {
    pub frames: Mutex<Vec<Received>>,
    pub rejected: AtomicUsize,
    pub connections: AtomicUsize,
    /// Connections that stopped reading (`Policy::hang_after`).
    pub hung: AtomicUsize,
    /// Set when the server is dropped: hung connections close.
    pub released: AtomicBool,
}

impl Log {
    pub fn frames(&self) -> Vec<Received> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Polls until `pred` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.frames()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.frames())
    }
}

/// What the receiver does on a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Drop the connection (without acking) after this many frames on the
    /// first connection; later connections behave.
    pub cut_first_after: Option<usize>,
    /// Never ack (the agent must keep everything queued).
    pub no_acks: bool,
    /// On the first connection, answer like a malicious collector instead
    /// of acking.
    pub hostile_first: Option<Hostile>,
    /// A hung collector host: after this many frames on the first
    /// connection (`hang_all`: on every connection), stop reading and keep
    /// the socket open until the server is dropped (the listener's receive
    /// buffer is small, so the agent's writes soon block).
    pub hang_after: Option<usize>,
    pub hang_all: bool,
}

/// What a malicious collector sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Acks for sequence numbers the agent has not sent yet.
    AcksAhead,
    /// The right ack, then one for sequence 0 (going backwards).
    AcksBackwards,
    /// Random bytes, delimiters included.
    Garbage,
    /// 1 MiB without a delimiter: a frame far beyond any ack's size.
    Huge,
}

/// Serves one byte stream until it closes.
pub fn serve<S: Read + Write>(
    mut s: S,
    key: &VerifyingKey,
    log: &Log,
    policy: Policy,
    first: bool,
) {
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let mut buf = [0u8; 4096];
    let mut on_this = 0usize;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let mut input = &buf[..n];
        let mut acks = Vec::new();
        while let Some(r) = dec.feed(&mut input) {
            let Ok(bytes) = r else {
                log.rejected.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let wire_bytes = to_wire(bytes).map_or(0, |w| w.len());
            let verified = SignedFrame::parse(bytes)
                .ok()
                .and_then(|f| f.verify(key).ok());
            let Some(v) = verified else {
                log.rejected.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let Ok(body) = v.body() else {
                log.rejected.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let h = *v.header();
            let mut frames = log
                .frames
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !frames.iter().any(|f| f.boot == h.boot && f.seq == h.seq) {
                frames.push(Received {
                    boot: h.boot,
                    seq: h.seq,
                    body,
                    wire_bytes,
                });
            }
            // Highest contiguous sequence of this boot from 0, or explained by a Gap.
            let mut seqs: Vec<u64> = frames
                .iter()
                .filter(|f| f.boot == h.boot)
                .map(|f| f.seq)
                .collect();
            for f in frames.iter().filter(|f| f.boot == h.boot) {
                if let Body::Gap(g) = &f.body {
                    for r in &g.ranges {
                        seqs.extend(r.first..r.first + r.count);
                    }
                }
            }
            seqs.sort_unstable();
            seqs.dedup();
            let contiguous = seqs
                .iter()
                .enumerate()
                .take_while(|(i, s)| *i as u64 == **s)
                .last()
                .map(|(_, s)| *s);
            drop(frames);
            on_this += 1;
            if let Some(seq) = contiguous {
                acks.push(Ack {
                    device: h.device,
                    boot: h.boot,
                    seq,
                });
            }
            if first && policy.cut_first_after.is_some_and(|n| on_this >= n) {
                return;
            }
            if (first || policy.hang_all) && policy.hang_after.is_some_and(|n| on_this >= n) {
                log.hung.fetch_add(1, Ordering::SeqCst);
                while !log.released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        }
        if !policy.no_acks {
            let ack = |a: &Ack| to_wire(&a.encode()).expect("ack fits").to_vec();
            let reply: Vec<u8> = match (policy.hostile_first.filter(|_| first), acks.last()) {
                (_, None) => Vec::new(),
                (None, Some(a)) => ack(a),
                (Some(Hostile::AcksAhead), Some(a)) => ack(&Ack {
                    seq: a.seq + 1_000_000,
                    ..*a
                }),
                (Some(Hostile::AcksBackwards), Some(a)) => {
                    let mut w = ack(a);
                    w.extend(ack(&Ack { seq: 0, ..*a }));
                    w
                }
                (Some(Hostile::Garbage), Some(a)) => (0..4096u64)
                    .map(|i| ((i + a.seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
                    .collect(),
                (Some(Hostile::Huge), Some(_)) => vec![0x41; 1 << 20],
            };
            if !reply.is_empty() && s.write_all(&reply).and_then(|()| s.flush()).is_err() {
                return;
            }
        }
    }
}

/// A self-signed Ed25519 certificate for `localhost`/127.0.0.1 and its
/// SHA-256 pin (the agent verifies Ed25519 or RSA certificates, not ECDSA).
pub fn certificate() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
    String,
) {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key_pair).expect("certificate");
    let der = cert.der().clone();
    let pin: String = Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key_pair.serialize_der()).expect("key");
    (der, key, pin)
}

pub struct Server {
    pub address: String,
    pub pin: String,
    pub log: Arc<Log>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.log.released.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.address);
    }
}

/// A TLS 1.3 receiver on a loopback port (`tls = false`: plain TCP).
pub fn listen(key: VerifyingKey, policy: Policy, tls: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    if policy.hang_after.is_some() {
        // Accepted sockets inherit it: a hung reader's window closes fast.
        use std::os::fd::AsRawFd;
        nix::sys::socket::setsockopt(
            listener.as_raw_fd(),
            nix::sys::socket::sockopt::RcvBuf,
            &4096,
        )
        .expect("SO_RCVBUF");
    }
    let address = listener.local_addr().expect("addr").to_string();
    let (cert, pkey, pin) = certificate();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(vec![cert], pkey)
            .expect("server config"),
    );
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let n = log.connections.fetch_add(1, Ordering::SeqCst);
                let (log, config) = (Arc::clone(&log), Arc::clone(&config));
                std::thread::spawn(move || {
                    if tls {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(
                            rustls::StreamOwned::new(conn, tcp),
                            &key,
                            &log,
                            policy,
                            n == 0,
                        );
                    } else {
                        serve(tcp, &key, &log, policy, n == 0);
                    }
                });
            }
        });
    }
    Server {
        address,
        pin,
        log,
        stop,
    }
}
