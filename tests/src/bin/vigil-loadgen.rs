//! Load generator for the collector benchmark: N simulated devices, each
//! with its own ed25519 key and its own TLS 1.3 connection (pinned), send
//! real signed one-sample frames at a given total rate (0: as fast as the
//! acks allow, with a window of unacked frames per device) and measure ack
//! latency. Frames are signed before the clock starts so the generator's
//! signing does not compete with the collector for the CPU.
//!
//! usage:
//!   vigil-loadgen keys N SEED             print N device keys (enroll them)
//!   vigil-loadgen run --address A --pin P --devices N --seed S
//!                     [--rate FPS] [--duration-s S] [--window W]
//!                     [--phase spread|together]
//!   vigil-loadgen ceiling [--n N]         raw ed25519 verify rates
//! `run` prints one JSON line: frames acked, frames/s, ack p50/p99 (ms).
//! Paced devices send at evenly spread phases of their period by default
//! (independent devices sample on their own clocks); `--phase together`
//! has all of them send in the same instant, every period: the worst case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::{to_wire, Ack, SigningKey};
use vigil_tests::collector::Device;

fn seed_key(seed: u64, i: u64) -> [u8; 32] {
    let d = Sha256::digest(format!("vigil-loadgen/{seed}/{i}"));
    d.into()
}

fn device(seed: u64, i: u64) -> Device {
    Device {
        key: SigningKey::from_bytes(&seed_key(seed, i)),
        boot: 1,
        seq: 0,
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args[i + 1].parse().ok().expect(name),
        None => default.unwrap_or_else(|| panic!("missing {name}")),
    }
}

#[derive(Default)]
struct Stats {
    acked: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("keys") => {
            let n: u64 = args[1].parse().unwrap();
            let seed: u64 = args[2].parse().unwrap();
            for i in 0..n {
                println!("{}", device(seed, i).public_key());
            }
        }
        Some("ceiling") => ceiling(arg(&args, "--n", Some(20_000))),
        Some("run") => run(&args),
        _ => {
            eprintln!("usage: vigil-loadgen keys N SEED | run ... | ceiling");
            std::process::exit(2);
        }
    }
}

/// Raw verify rates of this machine: one core, single and batch (64).
fn ceiling(n: usize) {
    let keys: Vec<SigningKey> = (0..64u64)
        .map(|i| SigningKey::from_bytes(&seed_key(99, i)))
        .collect();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("vigil/frame/v1\0 frame number {i} with some bytes of body").into_bytes())
        .collect();
    let sigs: Vec<ed25519_dalek::Signature> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| keys[i % 64].sign(m))
        .collect();
    let vks: Vec<ed25519_dalek::VerifyingKey> =
        keys.iter().map(SigningKey::verifying_key).collect();
    let t = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        vks[i % 64].verify_strict(m, &sigs[i]).unwrap();
    }
    let strict = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        vks[i % 64].verify(m, &sigs[i]).unwrap();
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in 0..n / 64 {
        let r = chunk * 64..chunk * 64 + 64;
        let m: Vec<&[u8]> = msgs[r.clone()].iter().map(Vec::as_slice).collect();
        let s = &sigs[r.clone()];
        let k: Vec<ed25519_dalek::VerifyingKey> = r.map(|i| vks[i % 64]).collect();
        ed25519_dalek::verify_batch(&m, s, &k).unwrap();
    }
    let batch = (n / 64 * 64) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"verify_strict_per_core\":{strict:.0},\"verify_per_core\":{single:.0},\"verify_batch64_per_core\":{batch:.0}}}"
    );
}

fn run(args: &[String]) {
    let address: String = arg(args, "--address", None);
    let pin: String = arg(args, "--pin", None);
    let devices: u64 = arg(args, "--devices", Some(1000));
    let seed: u64 = arg(args, "--seed", Some(1));
    let rate: f64 = arg(args, "--rate", Some(0.0));
    let duration = Duration::from_secs(arg(args, "--duration-s", Some(15)));
    let window: usize = arg(args, "--window", Some(64));
    let phase: String = arg(args, "--phase", Some("spread".to_string()));
    let spread = match phase.as_str() {
        "spread" => true,
        "together" => false,
        other => panic!("--phase {other}: spread or together"),
    };
    // Frames per device: enough for the run at the rate, or a cap when
    // unpaced.
    let per_device = if rate > 0.0 {
        (rate / devices as f64 * duration.as_secs_f64() * 1.1).ceil() as usize + 2
    } else {
        arg(args, "--frames-per-device", Some(1000))
    };
    eprintln!(
        "signing {} frames for {devices} devices ...",
        per_device as u64 * devices
    );
    let t = Instant::now();
    let frames: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|half| {
                s.spawn(move || {
                    (0..devices)
                        .filter(|i| i % 2 == half)
                        .map(|i| {
                            let mut d = device(seed, i);
                            let mut v = Vec::with_capacity(per_device + 1);
                            let h = d.hello_body();
                            v.push(to_wire(&d.frame(h)).unwrap().to_vec());
                            for _ in 0..per_device {
                                let b = d.sample_body(1);
                                v.push(to_wire(&d.frame(b)).unwrap().to_vec());
                            }
                            (i, v)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(u64, Vec<Vec<u8>>)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, v)| v).collect()
    });
    eprintln!("signed in {:.1} s", t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Arc::new(vigil_tests::tls::client_config(
        Some(&pin),
        &[&rustls::version::TLS13],
    ));
    let stats = Arc::new(Stats::default());
    let per_device_rate = rate / devices as f64;
    rt.block_on(async {
        // Connect everyone first (handshakes are not part of the measurement).
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut conns = Vec::new();
        for _ in 0..devices {
            let tcp = tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect");
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            conns.push(connector.connect(name, tcp).await.expect("TLS handshake"));
        }
        eprintln!(
            "{devices} TLS connections up; sending for {} s",
            duration.as_secs()
        );
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for (i, (conn, frames)) in conns.into_iter().zip(frames).enumerate() {
            let stats = Arc::clone(&stats);
            // Device i's first send, i/N of the way into its period.
            let offset = if spread && per_device_rate > 0.0 {
                Duration::from_secs_f64(i as f64 / devices as f64 / per_device_rate)
            } else {
                Duration::ZERO
            };
            tasks.push(tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(conn);
                let inflight: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
                let notify = Arc::new(tokio::sync::Notify::new());
                let reader = {
                    let (inflight, notify, stats) = (
                        Arc::clone(&inflight),
                        Arc::clone(&notify),
                        Arc::clone(&stats),
                    );
                    tokio::spawn(async move {
                        let mut dec = FrameDecoder::<64>::new();
                        let mut buf = [0u8; 512];
                        let mut lat = Vec::new();
                        loop {
                            let n = match rd.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let mut input = &buf[..n];
                            while let Some(r) = dec.feed(&mut input) {
                                let Ok(Ok(a)) = r.map(Ack::decode) else {
                                    continue;
                                };
                                let now = Instant::now();
                                let mut q = inflight.lock().unwrap();
                                while q.front().is_some_and(|(s, _)| *s <= a.seq) {
                                    let (_, t) = q.pop_front().unwrap();
                                    lat.push(now.duration_since(t).as_micros() as u64);
                                    stats.acked.fetch_add(1, Relaxed);
                                }
                                drop(q);
                                notify.notify_one();
                            }
                        }
                        stats.latencies_us.lock().unwrap().extend(lat);
                    })
                };
                let mut next = start + offset;
                for (seq, f) in frames.iter().enumerate() {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if per_device_rate > 0.0 {
                        if next > now {
                            tokio::time::sleep(next - now).await;
                        }
                        next += Duration::from_secs_f64(1.0 / per_device_rate);
                    } else {
                        while inflight.lock().unwrap().len() >= window {
                            if tokio::time::timeout(Duration::from_millis(100), notify.notified())
                                .await
                                .is_err()
                                && Instant::now() >= deadline
                            {
                                break;
                            }
                        }
                    }
                    inflight
                        .lock()
                        .unwrap()
                        .push_back((seq as u64, Instant::now()));
                    if wr.write_all(f).await.is_err() {
                        break;
                    }
                }
                // Let the last acks come in, then hang up.
                let settle = Instant::now() + Duration::from_secs(3);
                while !inflight.lock().unwrap().is_empty() && Instant::now() < settle {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = wr.shutdown().await;
                let _ = reader.await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = duration.as_secs_f64();
    let mut lat = stats.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    let acked = stats.acked.load(Relaxed);
    println!(
        "{{\"devices\":{devices},\"rate\":{rate},\"acked\":{acked},\"frames_per_s\":{:.0},\"ack_p50_ms\":{:.2},\"ack_p99_ms\":{:.2}}}",
        acked as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
