//! Delivery of alert and audit events to the SOC: JSON lines (file or
//! stdout), RFC 5424 syslog over UDP or TCP (octet-counted framing, RFC
//! 6587), and CEF (over syslog or to a file). Reads the archive's event
//! outbox with one cursor per sink, so an unreachable sink delays its own
//! events and loses none; a restart resumes where each sink stopped.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::alert;
use crate::config::{Sink, Transport};
use crate::metrics::Metrics;
use crate::store::Store;

enum Format {
    Json,
    Syslog,
    Cef,
}

enum Out {
    Stdout,
    File(PathBuf),
    Udp(UdpSocket, SocketAddr),
    Tcp(Option<TcpStream>, SocketAddr),
}

struct Target {
    name: String,
    format: Format,
    out: Out,
    last_warn: Option<Instant>,
}

impl Target {
    fn new(s: &Sink) -> std::io::Result<Target> {
        let net = |address: SocketAddr, transport: Transport| -> std::io::Result<Out> {
            Ok(match transport {
                Transport::Udp => {
                    let bind: SocketAddr = if address.is_ipv4() {
                        ([0, 0, 0, 0], 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    Out::Udp(UdpSocket::bind(bind)?, address)
                }
                Transport::Tcp => Out::Tcp(None, address),
            })
        };
        Ok(match s {
            Sink::Json { path } => Target {
                name: format!("json:{}", path.display()),
                format: Format::Json,
                out: if path.as_os_str() == "-" {
                    Out::Stdout
                } else {
                    Out::File(path.clone())
                },
                last_warn: None,
            },
            Sink::Syslog { address, transport } => Target {
                name: format!("syslog:{address}"),
                format: Format::Syslog,
                out: net(*address, *transport)?,
                last_warn: None,
            },
            Sink::Cef {
                address,
                transport,
                path,
            } => match (address, path) {
                (Some(a), _) => Target {
                    name: format!("cef:{a}"),
                    format: Format::Cef,
                    out: net(*a, *transport)?,
                    last_warn: None,
                },
                (None, Some(p)) => Target {
                    name: format!("cef:{}", p.display()),
                    format: Format::Cef,
                    out: Out::File(p.clone()),
                    last_warn: None,
                },
                (None, None) => {
                    return Err(std::io::Error::other("cef sink without address or path"));
                }
            },
        })
    }

    fn render(&self, event: &Value, host: &str, now: u64) -> String {
        let pid = std::process::id();
        match (&self.format, &self.out) {
            (Format::Json, _) => event.to_string(),
            (Format::Syslog, _) => alert::syslog_5424(event, host, pid, now),
            (Format::Cef, Out::File(_)) => alert::cef(event),
            // CEF travels as the message of a syslog line.
            (Format::Cef, _) => {
                let line = alert::syslog_5424(event, host, pid, now);
                let head = line.split(" [").next().unwrap_or("").to_string();
                format!("{head} - {}", alert::cef(event))
            }
        }
    }

    fn send(&mut self, lines: &[String]) -> std::io::Result<()> {
        match &mut self.out {
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                for l in lines {
                    writeln!(o, "{l}")?;
                }
                o.flush()
            }
            Out::File(p) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*p)?;
                let mut buf = String::new();
                for l in lines {
                    buf.push_str(l);
                    buf.push('\n');
                }
                f.write_all(buf.as_bytes())?;
                f.sync_data()
            }
            Out::Udp(sock, addr) => {
                for l in lines {
                    sock.send_to(l.as_bytes(), *addr)?;
                }
                Ok(())
            }
            Out::Tcp(conn, addr) => {
                if conn.is_none() {
                    let c = TcpStream::connect_timeout(addr, Duration::from_secs(3))?;
                    c.set_write_timeout(Some(Duration::from_secs(5)))?;
                    *conn = Some(c);
                }
                let Some(c) = conn.as_mut() else {
                    return Err(std::io::Error::other("not connected"));
                };
                let mut buf = Vec::new();
                for l in lines {
                    // RFC 6587 octet counting: "LEN SP MSG".
                    buf.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
                }
                let r = c.write_all(&buf).and_then(|()| c.flush());
                if r.is_err() {
                    *conn = None;
                }
                r
            }
        }
    }
}

/// Delivers new events to every sink until `stop`, then once more.
pub fn run(db: PathBuf, sinks: Vec<Sink>, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let store = match Store::open(&db) {
        Ok(s) => s,
        Err(e) => {
            log::error!("alert sinks disabled: {e}");
            return;
        }
    };
    let mut targets = Vec::new();
    for s in &sinks {
        match Target::new(s) {
            Ok(t) => targets.push(t),
            Err(e) => log::error!("sink {s:?} disabled: {e}"),
        }
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    loop {
        let stopping = stop.load(Relaxed);
        let urgent = std::mem::take(
            &mut *metrics
                .urgent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in &mut targets {
            if !urgent.is_empty() {
                let now = crate::clock::now_ms();
                let lines: Vec<String> = urgent.iter().map(|ev| t.render(ev, &host, now)).collect();
                match t.send(&lines) {
                    Ok(()) => {
                        metrics
                            .events_emitted
                            .fetch_add(u64::try_from(lines.len()).unwrap_or(0), Relaxed);
                    }
                    Err(e) => {
                        metrics.sink_errors.fetch_add(1, Relaxed);
                        log::warn!("sink {}: {e}: an urgent alert not delivered", t.name);
                    }
                }
            }
            deliver(&store, t, &host, &metrics);
        }
        if stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deliver(store: &Store, t: &mut Target, host: &str, metrics: &Metrics) {
    let key = format!("sink_cursor:{}", t.name);
    let mut cursor = match store.meta(&key) {
        Ok(Some(c)) => c.parse().unwrap_or(0),
        Ok(None) => 0,
        Err(e) => {
            log::warn!("reading the event outbox: {e}");
            return;
        }
    };
    loop {
        let events = match store.events_after(cursor, 500) {
            Ok(e) if e.is_empty() => return,
            Ok(e) => e,
            Err(e) => {
                log::warn!("reading the event outbox: {e}");
                return;
            }
        };
        let now = crate::clock::now_ms();
        let lines: Vec<String> = events
            .iter()
            .map(|(_, ev)| t.render(ev, host, now))
            .collect();
        if let Err(e) = t.send(&lines) {
            metrics.sink_errors.fetch_add(1, Relaxed);
            if t.last_warn.is_none_or_elapsed(Duration::from_secs(60)) {
                log::warn!("sink {}: {e}; will retry, nothing is dropped", t.name);
                t.last_warn = Some(Instant::now());
            }
            return;
        }
        metrics
            .events_emitted
            .fetch_add(u64::try_from(lines.len()).unwrap_or(0), Relaxed);
        cursor = events.last().map_or(cursor, |(id, _)| *id);
        if let Err(e) = store.set_meta(&key, &cursor.to_string()) {
            log::warn!("saving the {} cursor: {e}", t.name);
            return;
        }
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
