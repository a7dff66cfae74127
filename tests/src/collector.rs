//! The real `vigil-collector serve` as a child process on loopback, its
//! admin CLI on the same state dir, and a scripted device that speaks the
//! wire format with its own key (for forged, replayed and unknown frames a
//! real agent would never send).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use vigil_protocol::body::{Hello, Interface};
use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::sample::{CpuTicks, Memory, NetCounters};
use vigil_protocol::{
    to_wire, Ack, Body, DeviceId, Frame, Header, Sample, Samples, SigningKey, VERSION,
};

use crate::binary;

pub struct Collector {
    child: Option<Child>,
    pub state: PathBuf,
    pub tls: Option<String>,
    pub plain: Option<String>,
    pub metrics: Option<String>,
    pub pin: Option<String>,
}

impl Collector {
    /// Starts a collector on a plain loopback port without TLS (scripted
    /// devices speak plain TCP), with `extra` flags.
    pub fn start_plain(state: &Path, extra: &[&str]) -> Collector {
        let mut args = vec![
            "--no-tls",
            "--plain-listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
        ];
        args.extend_from_slice(extra);
        Collector::start(state, &args)
    }

    /// Starts `serve --state-dir STATE ARGS…` and waits until it listens.
    pub fn start(state: &Path, args: &[&str]) -> Collector {
        Collector::start_with(&[], state, args)
    }

    /// Like `start`, under a wrapper command (e.g. `ip netns exec NS`).
    pub fn start_with(wrapper: &[&str], state: &Path, args: &[&str]) -> Collector {
        std::fs::create_dir_all(state).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("serve.log"))
            .unwrap();
        let bin = binary("vigil-collector");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env("VIGIL_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start vigil-collector serve");
        let mut c = Collector {
            child: None,
            state: state.to_owned(),
            tls: None,
            plain: None,
            metrics: None,
            pin: None,
        };
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                panic!(
                    "collector exited before it was ready:\n{}",
                    std::fs::read_to_string(state.join("serve.log")).unwrap_or_default()
                );
            };
            if let Some(a) = line.strip_prefix("listening tls ") {
                c.tls = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("listening plain ") {
                c.plain = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("listening metrics ") {
                c.metrics = Some(a.to_string());
            } else if let Some(p) = line.strip_prefix("pin_sha256 = ") {
                c.pin = Some(p.trim_matches('"').to_string());
            } else if line == "ready" {
                break;
            }
        }
        // Keep draining stdout so the collector never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        c.child = Some(child);
        c
    }

    /// Enrolls `key` as `name` (of `model`), asserting that it worked.
    pub fn enroll(&self, key: &vigil_protocol::VerifyingKey, name: &str, model: &str) {
        enroll(&self.state, key, name, model);
    }

    /// Runs an admin command on the same state dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.state, args)
    }

    /// The JSON array an admin command prints with `--json`.
    fn json_list(&self, command: &str) -> Vec<Value> {
        let out = self.cli(&[command, "--json"]);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `devices --json`.
    pub fn devices(&self) -> Vec<Value> {
        self.json_list("devices")
    }

    pub fn device(&self, id: &str) -> Option<Value> {
        self.devices().into_iter().find(|d| d["id"] == id)
    }

    /// `alerts --json`.
    pub fn alerts(&self) -> Vec<Value> {
        self.json_list("alerts")
    }

    pub fn alert(&self, rule: &str) -> Option<Value> {
        self.alerts().into_iter().find(|a| a["rule"] == rule)
    }

    /// Polls `pred` until it holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&Collector) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pred(self)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("serve.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM and the exit code.
    /// SIGKILL: the collector dies wherever it is (mid-transaction
    /// included), as in a power cut or an OOM kill.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        None
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `enroll` on a state dir (a collector running on it or not).
pub fn enroll(state: &Path, key: &vigil_protocol::VerifyingKey, name: &str, model: &str) {
    let text = crate::key_text(key);
    let mut args = vec!["enroll", "--key", &text, "--name", name];
    if !model.is_empty() {
        args.extend(["--model", model]);
    }
    let out = cli(state, &args);
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The open and closed `transport.*` alerts (loss, replay, gaps, bad
/// signatures) of a state dir.
pub fn transport_alerts(state: &Path) -> Vec<Value> {
    let out = cli(state, &["alerts", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("alerts --json");
    all.into_iter()
        .filter(|a| {
            a["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("transport."))
        })
        .collect()
}

pub fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(binary("vigil-collector"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run vigil-collector")
}

/// A device scripted by the test: its own key, boot and sequence.
pub struct Device {
    pub key: SigningKey,
    pub boot: u32,
    pub seq: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Device {
    pub fn new(seed: u8) -> Device {
        Device {
            key: SigningKey::from_bytes(&[seed; 32]),
            boot: 1,
            seq: 0,
        }
    }

    pub fn from_key(key: SigningKey) -> Device {
        Device {
            key,
            boot: 1,
            seq: 0,
        }
    }

    pub fn id(&self) -> String {
        DeviceId::of(&self.key.verifying_key()).to_string()
    }

    pub fn public_key(&self) -> String {
        let mut s = String::new();
        vigil_protocol::frame::write_public_key(&mut s, &self.key.verifying_key()).unwrap();
        s
    }

    pub fn hello_body(&self) -> Body {
        Body::Hello(Hello {
            public_key: self.key.verifying_key().to_bytes(),
            agent_version: "test".try_into().unwrap(),
            hostname: "scripted".try_into().unwrap(),
            kernel_release: "6.1.0".try_into().unwrap(),
            os_release: "Debian GNU/Linux 12 (bookworm)".try_into().unwrap(),
            arch: "x86_64".try_into().unwrap(),
            kernel_boot_id: [self.boot as u8; 16],
            boot_time_s: 1_795_900_000,
            cpus: 2,
            interfaces: heapless::Vec::from_slice(&[Interface {
                name: "eth0".try_into().unwrap(),
                mac: Some([2, 0, 0, 0, 0, 1]),
            }])
            .unwrap(),
            disks: heapless::Vec::new(),
            manifests: heapless::Vec::new(),
        })
    }

    pub fn sample_body(&self, n: usize) -> Body {
        let t = now_ms();
        let one = |i: u64| Sample {
            time_ms: t - (n as u64 - 1 - i) * 1000,
            interval_ms: 1000,
            uptime_s: 100 + i,
            cpu: CpuTicks {
                user: 10 + i,
                system: 5,
                idle: 185,
                ..Default::default()
            },
            memory: Memory {
                total_kib: 4_000_000,
                available_kib: 3_000_000 - i,
                swap_total_kib: 0,
                swap_used_kib: 0,
            },
            pressure: None,
            net: heapless::Vec::from_slice(&[NetCounters {
                iface: 0,
                rx_bytes: 1000 + i,
                rx_packets: 10,
                tx_bytes: 500,
                tx_packets: 5,
                ..Default::default()
            }])
            .unwrap(),
            disk: heapless::Vec::new(),
            load_centi: [10, 20, 30],
            processes: 80,
        };
        let mut s = Samples::new(one(0));
        for i in 1..n as u64 {
            s.push(one(i)).unwrap();
        }
        Body::Samples(s)
    }

    /// Signs `body` as the next frame (by `signer`, normally our own key).
    pub fn frame_signed_by(&mut self, body: Body, signer: &SigningKey) -> Vec<u8> {
        self.frame_by(body, signer, now_ms())
    }

    /// The next frame, dated `time_ms` by the device's clock.
    pub fn frame_dated(&mut self, body: Body, time_ms: u64) -> Vec<u8> {
        let k = self.key.clone();
        self.frame_by(body, &k, time_ms)
    }

    fn frame_by(&mut self, body: Body, signer: &SigningKey, time_ms: u64) -> Vec<u8> {
        let h = Header {
            version: VERSION,
            device: DeviceId::of(&self.key.verifying_key()),
            boot: self.boot,
            seq: self.seq,
            time_ms,
        };
        self.seq = self.seq.wrapping_add(1);
        Frame::new(h, body).sign(signer).unwrap().to_vec()
    }

    pub fn frame(&mut self, body: Body) -> Vec<u8> {
        let k = self.key.clone();
        self.frame_signed_by(body, &k)
    }
}

/// A plain TCP link to the collector (`--insecure-plaintext`).
pub struct Link {
    s: TcpStream,
    dec: FrameDecoder<64>,
}

impl Link {
    pub fn connect(addr: &str) -> Link {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Link {
            s,
            dec: FrameDecoder::new(),
        }
    }

    /// Like `connect`, from `source` (another loopback address, e.g.
    /// 127.0.0.7: the collector sees another peer).
    pub fn connect_from(addr: &str, source: std::net::Ipv4Addr) -> Link {
        // std cannot bind before it connects; tokio's TcpSocket can.
        let to: std::net::SocketAddr = addr.parse().expect("an address:port");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let s = rt
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind(std::net::SocketAddr::new(source.into(), 0))?;
                sock.connect(to).await?.into_std()
            })
            .unwrap();
        drop(rt);
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Link {
            s,
            dec: FrameDecoder::new(),
        }
    }

    pub fn send(&mut self, frames: &[Vec<u8>]) {
        for f in frames {
            let w = to_wire(f).unwrap();
            if self.s.write_all(&w).is_err() {
                return;
            }
        }
    }

    /// The highest ack received within `timeout` (`None`: none, or closed).
    pub fn ack(&mut self, timeout: Duration) -> Option<Ack> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut input = &buf[..n];
                    while let Some(r) = self.dec.feed(&mut input) {
                        if let Ok(a) = Ack::decode(r.unwrap()) {
                            last = Some(a);
                        }
                    }
                    if last.is_some() {
                        // Give a following ack a moment, then report.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if last.is_some() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        last
    }

    /// How long until an ack of `seq` or above arrived (`None`: not
    /// within `timeout`, or closed). Unlike `ack`, returns the moment it
    /// comes: for latency.
    pub fn ack_of(&mut self, seq: u64, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 256];
        while started.elapsed() < timeout {
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut input = &buf[..n];
                    let mut got = false;
                    while let Some(r) = self.dec.feed(&mut input) {
                        if let Ok(a) = r
                            .map_err(|_| ())
                            .and_then(|r| Ack::decode(r).map_err(|_| ()))
                        {
                            got |= a.seq >= seq;
                        }
                    }
                    if got {
                        return Some(started.elapsed());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Whether the collector closed the connection within `timeout`.
    pub fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// GET /metrics from a collector's metrics listener: the body, after
/// checking the status and the Prometheus text content type.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// One sample's value (`name` with its labels, as printed), or -1.
pub fn metric(addr: &str, name: &str) -> f64 {
    scrape(addr)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}
