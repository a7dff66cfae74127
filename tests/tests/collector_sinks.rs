//! The collector's outputs read back by real peers: alerts and audit events
//! in a real `rsyslogd` (RFC 5424 over TCP with octet counting, CEF over
//! UDP), and its Prometheus metrics checked by `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use vigil_protocol::SigningKey;
use vigil_tests::collector::{cli, metric, scrape, Collector, Device, Link};
use vigil_tests::tempdir;

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rsyslog(std::process::Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rsyslog_receives_alerts_as_rfc5424_and_cef() {
    let dir = tempdir("rsyslog");
    let (tcp, udp) = (free_tcp_port(), free_udp_port());
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{dir}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="vigil" type="string" string="%app-name%|%msgid%|%syslogseverity-text%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{out}" template="vigil")
"#,
            dir = dir.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let _rsyslog = Rsyslog(
        Command::new("rsyslogd")
            .args([
                "-n",
                "-f",
                conf.to_str().unwrap(),
                "-i",
                dir.join("pid").to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd (apt-get install rsyslog)"),
    );
    // Wait until rsyslog listens on TCP.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tcp)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "rsyslogd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let state = dir.join("collector");
    let dev = Device::new(1);
    let o = cli(
        &state,
        &[
            "enroll",
            "--key",
            &dev.public_key(),
            "--name",
            "pathology \"scanner\" ]2",
        ],
    );
    assert!(o.status.success());
    let c = Collector::start_plain(
        &state,
        &[
            "--sink-syslog",
            &format!("127.0.0.1:{tcp}/tcp"),
            "--sink-cef",
            &format!("127.0.0.1:{udp}"),
        ],
    );
    // An unknown device and a forged frame raise alerts.
    let mut stranger = Device::new(2);
    let mut link = Link::connect(c.plain.as_ref().unwrap());
    link.send(&[stranger.frame(stranger.sample_body(1))]);
    let mut dev = Device::new(1);
    let forged = dev.frame_signed_by(dev.hello_body(), &SigningKey::from_bytes(&[7; 32]));
    let mut link = Link::connect(c.plain.as_ref().unwrap());
    link.send(&[forged]);

    let ok = c.wait_for(Duration::from_secs(20), |_| {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        // Each sink delivers on its own: wait for the alert in both.
        t.contains("rule=\"transport.bad-signature\"")
            && t.contains("|transport.bad-signature|")
            && t.contains("action=\"enroll\"")
            && t.contains("enrollment.unknown-device")
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(ok, "rsyslog received:\n{text}\ncollector log:\n{}", c.log());
    // rsyslog parsed our RFC 5424 header and structured data.
    let sd = text
        .lines()
        .find(|l| {
            l.starts_with("vigil-collector|alert|err|[vigil@32473 ")
                && l.contains("rule=\"transport.bad-signature\"")
        })
        .unwrap_or_else(|| panic!("no parsed RFC 5424 alert in:\n{text}"));
    assert!(sd.contains(&format!("device=\"{}\"", dev.id())), "{sd}");
    assert!(
        sd.contains(r#"device_name="pathology \"scanner\" \]2""#),
        "{sd}"
    );
    assert!(sd.contains("severity=\"high\""), "{sd}");
    let audit = text
        .lines()
        .find(|l| {
            l.starts_with("vigil-collector|audit|notice|[vigil@32473 ")
                && l.contains("action=\"enroll\"")
        })
        .unwrap_or_else(|| panic!("no audit event in:\n{text}"));
    assert!(
        audit.contains(&format!("target=\"{}\"", dev.id())),
        "{audit}"
    );
    // CEF over UDP: header fields and escaped extension.
    let cef = text
        .lines()
        .find(|l| {
            l.contains("CEF:0|Vigil|vigil-collector|") && l.contains("|transport.bad-signature|")
        })
        .unwrap_or_else(|| panic!("no CEF alert in:\n{text}"));
    assert!(cef.contains("|8|"), "{cef}");
    assert!(
        cef.contains(&format!("deviceExternalId={}", dev.id())),
        "{cef}"
    );
    assert!(cef.contains(r#"dvchost=pathology "scanner" ]2"#), "{cef}");
    assert_eq!(c.stop(), Some(0));
}

/// A strict reading of the text format: every sample line is
/// `name{label="value",...} number` with a declared TYPE.
fn strict_parse(body: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(name.starts_with("vigil_collector_"), "{line}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.contains(*b))
            .unwrap_or(name);
        assert!(typed.contains(base), "no TYPE for {name}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for kv in labels[1..labels.len() - 1].split(',') {
                let (k, v) = kv.split_once('=').unwrap();
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
            }
        }
        out.push((series.to_string(), v));
    }
    out
}

#[test]
fn metrics_pass_promtool_and_count_what_happened() {
    let dir = tempdir("metrics");
    let state = dir.join("collector");
    let mut dev = Device::new(4);
    assert!(cli(
        &state,
        &["enroll", "--key", &dev.public_key(), "--name", "us-1"]
    )
    .status
    .success());
    let c = Collector::start_plain(&state, &["--metrics-listen", "127.0.0.1:0"]);
    let mut link = Link::connect(c.plain.as_ref().unwrap());
    let hello = dev.hello_body();
    let frames = vec![
        dev.frame(hello),
        dev.frame(dev.sample_body(3)),
        dev.frame(dev.sample_body(3)),
    ];
    link.send(&frames);
    assert_eq!(link.ack(Duration::from_secs(5)).map(|a| a.seq), Some(2));
    let forged = dev.frame_signed_by(dev.sample_body(1), &SigningKey::from_bytes(&[8; 32]));
    link.send(&[forged]);
    let metrics = c.metrics.clone().unwrap();
    let ok = c.wait_for(Duration::from_secs(10), |_| {
        let m = scrape(&metrics);
        m.contains("vigil_collector_frames_rejected_total{reason=\"bad_signature\"} 1")
            && m.contains("vigil_collector_alerts_total{severity=\"high\"} 1")
    });
    let body = scrape(&metrics);
    assert!(ok, "{body}");
    let samples = strict_parse(&body);
    let get = |s: &str| samples.iter().find(|(n, _)| n == s).map(|(_, v)| *v);
    assert_eq!(get("vigil_collector_frames_stored_total"), Some(3.0));
    assert_eq!(
        get("vigil_collector_devices{state=\"approved\"}"),
        Some(1.0)
    );
    assert_eq!(get("vigil_collector_connections_open"), Some(1.0));
    assert!(get("vigil_collector_ack_latency_seconds_count").unwrap() >= 1.0);
    assert!(get("vigil_collector_alerts_total{severity=\"high\"}").unwrap() >= 1.0);
    // promtool's own linter, when Debian's prometheus package is there.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let o = p.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "promtool check metrics:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Err(_) => vigil_tests::cannot_run(
            "promtool not installed (apt-get install prometheus); the strict parser above checked the format",
        ),
    }
    drop(link);
    assert_eq!(c.stop(), Some(0));
}

/// One raw exchange with the metrics listener: `parts` written with a
/// pause between them, the whole response read.
fn raw(addr: &str, parts: &[&[u8]]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        s.write_all(p).unwrap();
    }
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

/// Connections waiting in the accept queue of the IPv4 listener on
/// `port` (`rx_queue` of a LISTEN row of /proc/net/tcp).
fn accept_backlog(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        if local_port != port || *f.get(3)? != "0A" {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn metrics_answer_head_and_split_requests_and_idle_scrapers_hold_no_more_than_their_slots() {
    let dir = tempdir("metrics-http");
    let c = Collector::start_plain(&dir.join("collector"), &["--metrics-listen", "127.0.0.1:0"]);
    let m = c.metrics.clone().unwrap();
    let head = raw(&m, &[b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (h, body) = head.split_once("\r\n\r\n").unwrap();
    assert!(body.is_empty(), "HEAD sent a body: {body}");
    let length: usize = h
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 100, "{h}");
    // The request line in one segment, the headers in a second.
    let split = raw(&m, &[b"GET /metrics HTTP/1.1\r\n", b"Host: x\r\n\r\n"]);
    assert!(split.starts_with("HTTP/1.1 200 OK\r\n"), "{split}");
    assert!(
        split.contains("vigil_collector_frames_stored_total"),
        "{split}"
    );
    let post = raw(
        &m,
        &[b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"],
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(raw(&m, &[b"GET / HTTP/1.1\r\n\r\n"]).starts_with("HTTP/1.1 404"));
    // 200 connections that never send a request: the collector holds at
    // most its scrape slots (16) of them, not 200 descriptors.
    let before = open_fds(c.pid());
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&m).unwrap())
        .collect();
    // Once the listener's accept queue is empty, every one of them has been
    // accepted (and, beyond the slots, closed at once).
    let port: u16 = m.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        c.wait_for(Duration::from_secs(30), |_| accept_backlog(port) == Some(0)),
        "the metrics listener never drained its accept queue"
    );
    let held = open_fds(c.pid());
    assert!(
        held <= before + 16 + 2,
        "{held} descriptors open with 200 idle scrapers (was {before})"
    );
    drop(idle);
    // Slots come back when idle peers go: a real scrape works again.
    assert!(
        c.wait_for(Duration::from_secs(10), |_| {
            let mut s = std::net::TcpStream::connect(&m).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.starts_with("HTTP/1.1 200")
        }),
        "no scrape answered after the idle peers left"
    );
    assert_eq!(c.stop(), Some(0));
}

#[test]
fn tls12_clients_idle_handshakes_and_excess_connections_are_refused() {
    let dir = tempdir("limits");
    let c = Collector::start(
        &dir.join("collector"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--handshake-timeout-s",
            "1",
            "--max-connections",
            "3",
        ],
    );
    let (addr, metrics) = (c.tls.clone().unwrap(), c.metrics.clone().unwrap());

    // A client that offers only TLS 1.2 gets no session.
    // (No pin: this is about the protocol version only.)
    let config = vigil_tests::tls::client_config(None, &[&rustls::version::TLS12]);
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut failed = false;
    for _ in 0..10 {
        match conn.complete_io(&mut tcp) {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(_) if !conn.is_handshaking() => break,
            Ok(_) => {}
        }
    }
    assert!(
        failed && conn.is_handshaking(),
        "a TLS 1.2 handshake succeeded"
    );
    drop(tcp);

    // Three connections that never start a handshake hold every slot ...
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    assert!(c.wait_for(Duration::from_secs(5), |_| metric(
        &metrics,
        "vigil_collector_connections_open"
    ) == 3.0));
    // ... so a fourth is refused at once ...
    let mut fourth = TcpStream::connect(&addr).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 16];
    assert!(
        matches!(fourth.read(&mut b), Ok(0) | Err(_)),
        "the fourth connection was served"
    );
    assert!(metric(&metrics, "vigil_collector_connections_refused_total") >= 1.0);
    // ... and the handshake timeout closes the idle ones (slow-loris).
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "an idle handshake was kept open"
        );
    }
    // Counted as the collector closes them: waited for, not read at once
    // (on a loaded machine the count can trail the client's read).
    assert!(c.wait_for(Duration::from_secs(30), |_| metric(
        &metrics,
        "vigil_collector_connections_open"
    ) == 0.0));
    assert!(
        c.wait_for(Duration::from_secs(30), |_| metric(
            &metrics,
            "vigil_collector_tls_handshake_failures_total"
        ) >= 4.0),
        "handshake failures: {}",
        metric(&metrics, "vigil_collector_tls_handshake_failures_total")
    );
    assert_eq!(c.stop(), Some(0));
}
