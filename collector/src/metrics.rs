//! The collector's own health as Prometheus text exposition
//! (`vigil_collector_*`), served on an optional loopback HTTP port.
//! Counters only go up; nothing here blocks ingest.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alert::Severity;
use crate::store::registry::Registry;
use crate::store::DeviceState;

/// Reasons a frame is rejected, as label values.
pub const REJECT_REASONS: &[&str] = &[
    "bad_signature",
    "replay",
    "unknown_device",
    "revoked_device",
    "pending_device",
    "malformed",
    "corrupt",
    "oversize",
    "wrong_device",
    "rate_limited",
    "device_rate_limited",
    "out_of_range",
];

/// Ack latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Metrics {
    /// Ticks the archive writer has handled: the watchdog's sign of life.
    pub writer_ticks: AtomicU64,
    pub frames_received: AtomicU64,
    frames_stored: AtomicU64,
    frames_duplicate: AtomicU64,
    rejected: [AtomicU64; REJECT_REASONS.len()],
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub timeouts: AtomicU64,
    alerts: [AtomicU64; 5],
    latency_buckets: [AtomicU64; 11],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    commits: AtomicU64,
    pub commit_failures: AtomicU64,
    commit_us: AtomicU64,
    pub events_emitted: AtomicU64,
    pub sink_errors: AtomicU64,
    /// Events that cannot wait for the archive's outbox because the
    /// archive cannot be written (`collector.archive-write-failed`): the
    /// sinks take them from here, once, best effort.
    pub urgent: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl Metrics {
    pub fn reject(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            if let Some(c) = self.rejected.get(i) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    /// Frames of a transaction that committed: counted only then, so a
    /// failed commit (a full disk) counts nothing it did not keep.
    pub fn committed(&self, stored: usize, duplicates: usize) {
        self.frames_stored
            .fetch_add(u64::try_from(stored).unwrap_or(u64::MAX), Relaxed);
        self.frames_duplicate
            .fetch_add(u64::try_from(duplicates).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn alert(&self, s: Severity) {
        if let Some(c) = self.alerts.get(s as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Time from a frame's bytes arriving to its ack being written.
    pub fn observe_ack(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn observe_commit(&self, d: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self, registry: &Registry) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "vigil_collector_frames_received_total",
            "Frames decoded from all links, before verification.",
            self.frames_received.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_frames_stored_total",
            "Verified frames durably stored (each sequence number once).",
            self.frames_stored.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_frames_duplicate_total",
            "Verified frames already in the archive (resends), acked again.",
            self.frames_duplicate.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vigil_collector_frames_rejected_total Frames rejected, by reason.\n# TYPE vigil_collector_frames_rejected_total counter");
        for (r, c) in REJECT_REASONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                o,
                "vigil_collector_frames_rejected_total{{reason=\"{r}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP vigil_collector_devices Devices by enrollment state.\n# TYPE vigil_collector_devices gauge");
        for s in [
            DeviceState::Pending,
            DeviceState::Approved,
            DeviceState::Revoked,
        ] {
            let _ = writeln!(
                o,
                "vigil_collector_devices{{state=\"{}\"}} {}",
                s.name(),
                registry.count(s)
            );
        }
        gauge(
            &mut o,
            "vigil_collector_connections_open",
            "Open device connections (TLS and plain).",
            self.connections_open.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_connections_total",
            "Connections accepted.",
            self.connections_total.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_connections_refused_total",
            "Connections refused at the connection limit.",
            self.connections_refused.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            self.tls_handshake_failures.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_idle_timeouts_total",
            "Connections closed for idleness.",
            self.timeouts.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vigil_collector_alerts_total Alerts opened, by severity.\n# TYPE vigil_collector_alerts_total counter");
        for (s, c) in [
            Severity::Info,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .iter()
        .zip(&self.alerts)
        {
            let _ = writeln!(
                o,
                "vigil_collector_alerts_total{{severity=\"{}\"}} {}",
                s.name(),
                c.load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP vigil_collector_ack_latency_seconds Time from a frame's arrival to its ack being written.\n# TYPE vigil_collector_ack_latency_seconds histogram");
        for (b, c) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                o,
                "vigil_collector_ack_latency_seconds_bucket{{le=\"{b}\"}} {}",
                c.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "vigil_collector_ack_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "vigil_collector_ack_latency_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "vigil_collector_ack_latency_seconds_count {count}");
        counter(
            &mut o,
            "vigil_collector_commits_total",
            "Archive transactions committed.",
            self.commits.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_commit_failures_total",
            "Archive transactions that failed (nothing of them acknowledged), e.g. a full disk.",
            self.commit_failures.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vigil_collector_commit_seconds_total Time spent in archive transactions.\n# TYPE vigil_collector_commit_seconds_total counter\nvigil_collector_commit_seconds_total {}", self.commit_us.load(Relaxed) as f64 / 1e6);
        counter(
            &mut o,
            "vigil_collector_events_emitted_total",
            "Alert and audit events delivered to sinks.",
            self.events_emitted.load(Relaxed),
        );
        counter(
            &mut o,
            "vigil_collector_sink_errors_total",
            "Failed deliveries to sinks (retried).",
            self.sink_errors.load(Relaxed),
        );
        o
    }
}

/// Longest request head read; more is refused (431).
const MAX_HEAD: usize = 8 * 1024;
/// Scrapes served at once; connections beyond it are closed at once, so
/// the metrics port cannot use up the collector's file descriptors.
pub const MAX_SCRAPES: usize = 16;
/// A request head must arrive within this, however it is split.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The response to one request head (`render` makes the exposition):
/// `GET` and `HEAD` of `/metrics` (with or without a query), 405 for other
/// methods there, 404 elsewhere, 400 for what is not an HTTP/1 request.
pub fn respond(head: &[u8], render: impl FnOnce() -> String) -> String {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let plain = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return plain("400 Bad Request", "");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return plain("400 Bad Request", "");
    }
    if target.split('?').next() != Some("/metrics") {
        return plain("404 Not Found", "");
    }
    match method {
        "GET" | "HEAD" => {
            let body = render();
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method == "GET" {
                r.push_str(&body);
            }
            r
        }
        _ => plain("405 Method Not Allowed", "Allow: GET, HEAD\r\n"),
    }
}

/// Whether `head` holds a whole request head (up to its blank line).
fn complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// Reads a request head however many segments it comes in: `None` when it
/// does not come within `HEAD_TIMEOUT` or the peer goes, `Some(Err)` when
/// it is longer than `MAX_HEAD`.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Result<Vec<u8>, ()>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        head.extend_from_slice(buf.get(..n).unwrap_or(&[]));
        if complete(&head) {
            return Some(Ok(head));
        }
        if head.len() > MAX_HEAD {
            return Some(Err(()));
        }
    }
}

/// Serves `/metrics` (`respond`) until the runtime stops, at most
/// `MAX_SCRAPES` connections at once.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, registry: Registry) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(s); // busy: closed at once, holding nothing
            continue;
        };
        let (metrics, registry) = (Arc::clone(&metrics), registry.clone());
        let mut s = s;
        tokio::spawn(async move {
            let resp = match read_head(&mut s).await {
                None => return,
                Some(Err(())) => "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                Some(Ok(head)) => respond(&head, || metrics.render(&registry)),
            };
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn status(r: &str) -> &str {
        r.split("\r\n").next().unwrap()
    }

    #[test]
    fn get_and_head_of_metrics_and_nothing_else() {
        let body = || "vigil_up 1\n".to_string();
        let get = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body);
        assert_eq!(status(&get), "HTTP/1.1 200 OK");
        assert!(get.ends_with("\r\n\r\nvigil_up 1\n"));
        let head = respond(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", body);
        assert_eq!(status(&head), "HTTP/1.1 200 OK");
        assert!(head.contains("Content-Length: 11\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", body);
        assert_eq!(status(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(post.contains("Allow: GET, HEAD\r\n"));
        assert_eq!(
            status(&respond(b"GET /metricsx HTTP/1.1\r\n\r\n", body)),
            "HTTP/1.1 404 Not Found"
        );
        for bad in [
            &b"\x16\x03\x01\x00"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3 x\r\n\r\n",
        ] {
            assert_eq!(status(&respond(bad, body)), "HTTP/1.1 400 Bad Request");
        }
    }

    #[test]
    fn a_head_is_complete_only_at_its_blank_line() {
        assert!(!complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(complete(b"GET /metrics HTTP/1.0\n\n"));
    }
}
