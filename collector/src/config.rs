//! The collector's configuration: a TOML file (unknown fields rejected) with
//! every option also settable by a flag. Validation happens here, once; the
//! rest of the collector takes a `Config` as given. Never opens sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default state directory (the SQLite archive and the TLS identity).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vigil-collector";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: PathBuf,
    /// `serve --new` only (never in the file): an archive file that cannot
    /// be used (empty, cut off, foreign) is moved aside and a new one made.
    #[serde(skip)]
    pub new_archive: bool,
    /// TLS 1.3 listener (`None`: no TLS listener).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key; both absent: a self-signed Ed25519
    /// certificate is created in the state dir on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Plain TCP listener; only with `insecure_plaintext = true`.
    pub plain_listen: Option<SocketAddr>,
    pub insecure_plaintext: bool,
    /// Serial ports to read frames from, acks written back.
    pub serial: Vec<SerialPort>,
    /// Loopback HTTP port for the collector's own Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    /// Raw samples older than this are rolled up to per-minute aggregates.
    pub retention_days: u32,
    /// How often the roll-up runs (also once at start).
    pub rollup_every_s: u64,
    /// How often a signed checkpoint of the archive's hash chain goes to
    /// the sinks (also at stop); 60..=86400.
    pub checkpoint_every_s: u64,
    /// An approved device silent for longer than this raises an alert.
    pub silence_s: u64,
    /// A sequence hole neither filled nor explained by a `Gap` for this
    /// long raises a loss alert.
    pub loss_grace_s: u64,
    /// A device clock further than this from the collector's raises
    /// `device.clock-skew`; 10..=86400.
    pub clock_skew_s: u64,
    /// Where alerts and audit events go (several at once).
    pub sinks: Vec<Sink>,
    /// Baselines and the detectors.
    pub detect: Detect,
    /// Who may log in to which devices, from where, when.
    pub access: Access,
}

/// The access policy: sessions the agents report are checked against it.
/// A device no rule covers has no approved access: every session on it is
/// outside policy, unless an access window is opened for it
/// (`vigil-collector access open`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// IANA time zone the windows are in (default: the collector's local
    /// time zone).
    pub timezone: Option<String>,
    pub policy: Vec<AccessRule>,
}

/// One rule: for a device (id or name) or a model, the users, source
/// prefixes and time windows allowed. Empty `users` or `sources` allow
/// any; empty `windows` allow only the windows opened with `access open`;
/// `"always"` allows any time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessRule {
    pub device: Option<String>,
    pub model: Option<String>,
    pub users: Vec<String>,
    pub sources: Vec<String>,
    /// `Mon-Fri 09:00-17:00`, `Sat,Sun 10:00-12:00`, `daily 22:00-06:00`,
    /// `always`.
    pub windows: Vec<String>,
}

/// How devices are baselined and what the network detectors allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detect {
    /// A new device's baseline closes for review after this long.
    pub baseline_period_s: u64,
    /// The hospital's own networks: an inbound connection from outside
    /// them is from the Internet; lateral movement is towards them.
    pub internal_prefixes: Vec<String>,
    /// Outbound endpoints never alerted as new (`PREFIX`, `PREFIX:PORT`,
    /// `[V6PREFIX]:PORT`).
    pub allow_outbound: Vec<String>,
    /// Lateral-movement ports allowed towards these endpoints (e.g. the
    /// vendor's SSH jump host).
    pub allow_lateral: Vec<String>,
    /// Metrics learned and shown but never alerted on: a metric name
    /// (`disk.read_bytes`, `net.eth0.tx_bytes`) or a prefix ending in `*`
    /// (`disk.*`, `net.wlan0.*`). For what the device does not own, e.g.
    /// a disk shared with its host.
    pub unwatched_metrics: Vec<String>,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            baseline_period_s: 7 * 86_400,
            internal_prefixes: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "fc00::/7",
                "fe80::/10",
                "::1/128",
            ]
            .map(String::from)
            .to_vec(),
            allow_outbound: Vec::new(),
            allow_lateral: Vec::new(),
            unwatched_metrics: Vec::new(),
        }
    }
}

/// An address prefix, e.g. `10.0.0.0/8` or `fd00::/8` (a bare address is
/// a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: std::net::IpAddr,
    len: u8,
}

impl Prefix {
    pub fn addr(&self) -> std::net::IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn bits(&self) -> u8 {
        self.len
    }

    /// One address as a /32 or /128; an IPv4-mapped IPv6 address as IPv4.
    pub fn host(ip: std::net::IpAddr) -> Prefix {
        let addr = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    /// The same prefix with its host bits cleared (`10.1.2.3/24` is
    /// `10.1.2.0/24`).
    pub fn network(&self) -> Prefix {
        use std::net::IpAddr::{V4, V6};
        let keep = |bits: u32, len: u8| -> u128 {
            let host = bits - u32::from(len);
            if host >= 128 {
                0
            } else {
                u128::MAX << host
            }
        };
        let addr = match self.addr {
            V4(a) => V4((u32::from(a) & (keep(32, self.len) as u32)).into()),
            V6(a) => V6((u128::from(a) & keep(128, self.len)).into()),
        };
        Prefix {
            addr,
            len: self.len,
        }
    }

    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some(Prefix { addr, len })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        // An IPv4-mapped IPv6 address is the IPv4 address.
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (V4(p), V4(x)) => (u128::from(u32::from(p)), u128::from(u32::from(x)), 32),
            (V6(p), V6(x)) => (u128::from(p), u128::from(x), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.len);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An allowed endpoint: a prefix and, optionally, one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRule {
    pub prefix: Prefix,
    pub port: Option<u16>,
}

impl EndpointRule {
    /// `10.1.0.0/16`, `10.1.2.3:22`, `[fd00::/8]:443`, `fd00::1`.
    pub fn parse(s: &str) -> Option<EndpointRule> {
        if let Some(rest) = s.strip_prefix('[') {
            let (p, port) = rest.split_once(']')?;
            let port = match port.strip_prefix(':') {
                Some(n) => Some(n.parse().ok()?),
                None if port.is_empty() => None,
                None => return None,
            };
            return Some(EndpointRule {
                prefix: Prefix::parse(p)?,
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((p, n)) if !p.contains(':') => Some(EndpointRule {
                prefix: Prefix::parse(p)?,
                port: Some(n.parse().ok()?),
            }),
            _ => Some(EndpointRule {
                prefix: Prefix::parse(s)?,
                port: None,
            }),
        }
    }

    pub fn allows(&self, ip: std::net::IpAddr, port: u16) -> bool {
        self.prefix.contains(ip) && self.port.map_or(true, |p| p == port)
    }
}

/// The detection settings, parsed (after `validate`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub baseline_period_ms: u64,
    pub internal: Vec<Prefix>,
    pub allow_outbound: Vec<EndpointRule>,
    pub allow_lateral: Vec<EndpointRule>,
    /// `detect.unwatched_metrics`, a trailing `*` kept as written.
    pub unwatched: Vec<String>,
}

impl Policy {
    pub fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        self.internal.iter().any(|p| p.contains(ip))
    }

    /// Whether deviations of metric `key` raise alerts.
    pub fn watched(&self, key: &str) -> bool {
        !self.unwatched.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == p,
        })
    }
}

/// The metric families (`cpu.busy` is in `cpu`); a pattern must name one.
const METRIC_FAMILIES: &[&str] = &["cpu", "mem", "swap", "psi", "net", "disk", "processes"];

fn metric_pattern(p: &str) -> Result<String, String> {
    let body = p.strip_suffix('*').unwrap_or(p);
    if body.contains('*') {
        return Err(format!("`{p}`: a `*` may only end the pattern"));
    }
    let family = body.split('.').next().unwrap_or("");
    if !METRIC_FAMILIES.contains(&family) {
        return Err(format!(
            "`{p}` names no metric: they start with one of {}",
            METRIC_FAMILIES.join(", ")
        ));
    }
    Ok(p.to_string())
}

impl Detect {
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        let bad = |field, v: &str, what: &str| ConfigError::Invalid {
            field,
            message: format!("`{v}` is not {what}"),
        };
        let prefixes = self
            .internal_prefixes
            .iter()
            .map(|p| {
                Prefix::parse(p).ok_or_else(|| {
                    bad(
                        "detect.internal_prefixes",
                        p,
                        "an address prefix like 10.0.0.0/8",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let rules = |field, list: &[String]| {
            list.iter()
                .map(|e| {
                    EndpointRule::parse(e)
                        .ok_or_else(|| bad(field, e, "PREFIX, PREFIX:PORT or [V6PREFIX]:PORT"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if self.baseline_period_s == 0 {
            return Err(ConfigError::Invalid {
                field: "detect.baseline_period_s",
                message: "must be at least 1".into(),
            });
        }
        Ok(Policy {
            baseline_period_ms: self.baseline_period_s.saturating_mul(1000),
            internal: prefixes,
            allow_outbound: rules("detect.allow_outbound", &self.allow_outbound)?,
            allow_lateral: rules("detect.allow_lateral", &self.allow_lateral)?,
            unwatched: self
                .unwatched_metrics
                .iter()
                .map(|p| {
                    metric_pattern(p).map_err(|message| ConfigError::Invalid {
                        field: "detect.unwatched_metrics",
                        message,
                    })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A weekly time window in local time: days (Monday = 0) and minutes of
/// the day; an end at or before the start runs past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: [bool; 7],
    pub start_min: u16,
    pub end_min: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// Every minute of every day.
    pub const ALWAYS: Window = Window {
        days: [true; 7],
        start_min: 0,
        end_min: 1440,
    };

    /// `always`, or `DAYS HH:MM-HH:MM` where DAYS is `daily`, a day
    /// (`Mon`), a range (`Mon-Fri`) or a list of those (`Mon,Wed,Fri-Sun`).
    pub fn parse(s: &str) -> Option<Window> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("always") {
            return Some(Window::ALWAYS);
        }
        let (days_s, times) = s.split_once(' ')?;
        let day = |d: &str| DAYS.iter().position(|n| n.eq_ignore_ascii_case(d));
        let mut days = [false; 7];
        if days_s.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for part in days_s.split(',') {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    *days.get_mut(d)? = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (a, b) = times.trim().split_once('-')?;
        let (start_min, end_min) = (minute(a)?, minute(b)?);
        (start_min < 1440).then_some(Window {
            days,
            start_min,
            end_min,
        })
    }
}

/// An access rule, parsed.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub device: Option<String>,
    pub model: Option<String>,
    pub users: Vec<String>,
    pub sources: Vec<Prefix>,
    pub windows: Vec<Window>,
    /// The windows as written (`Mon-Fri 09:00-17:00, always`).
    pub windows_text: String,
    /// The rule as written, for evidence.
    pub text: String,
}

impl Access {
    pub fn grants(&self) -> Result<Vec<AccessGrant>, ConfigError> {
        let bad = |field, message: String| ConfigError::Invalid { field, message };
        self.policy
            .iter()
            .enumerate()
            .map(|(n, r)| {
                if r.device.is_some() == r.model.is_some() {
                    return Err(bad(
                        "access.policy",
                        format!("rule {}: give exactly one of device or model", n + 1),
                    ));
                }
                let sources = r
                    .sources
                    .iter()
                    .map(|p| {
                        Prefix::parse(p).ok_or_else(|| {
                            bad("access.policy.sources", format!("`{p}` is not an address prefix"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let windows = r
                    .windows
                    .iter()
                    .map(|w| {
                        Window::parse(w).ok_or_else(|| {
                            bad(
                                "access.policy.windows",
                                format!("`{w}` is not `always` or DAYS HH:MM-HH:MM (e.g. Mon-Fri 09:00-17:00)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let target = match (&r.device, &r.model) {
                    (Some(d), _) => format!("device {d}"),
                    (_, Some(m)) => format!("model {m}"),
                    _ => String::new(),
                };
                let list = |v: &[String]| if v.is_empty() { "any".to_string() } else { v.join(",") };
                Ok(AccessGrant {
                    device: r.device.clone(),
                    model: r.model.clone(),
                    users: r.users.clone(),
                    sources,
                    windows,
                    windows_text: r.windows.join(", "),
                    text: format!(
                        "{target}: users {}, sources {}, windows {}",
                        list(&r.users),
                        list(&r.sources),
                        if r.windows.is_empty() { "only those opened with `access open`".to_string() } else { r.windows.join(", ") }
                    ),
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPort {
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

/// Longest `limits.handshake_timeout_s` accepted.
pub const MAX_HANDSHAKE_TIMEOUT_S: u64 = 60;
/// Longest `limits.idle_timeout_s` accepted.
pub const MAX_IDLE_TIMEOUT_S: u64 = 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections (TLS and plain together); more are refused.
    pub max_connections: usize,
    /// Largest frame accepted, bytes (at most the wire format's 4096).
    pub max_frame_bytes: usize,
    /// Frames per second per connection; faster senders are slowed down
    /// (TCP back-pressure), not dropped.
    pub frames_per_s: u32,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_s: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_s: u64,
    /// Attempts by unknown devices (Hello checks) per minute, all
    /// connections together; beyond it they are dropped unverified. An
    /// address's first attempt of a minute is outside this budget (up to
    /// ten times it), so a flood cannot keep a new device from appearing.
    pub unknown_per_minute: u32,
    /// Attempts by unknown devices per minute from one address.
    pub unknown_per_address_per_minute: u32,
    /// Devices allowed to wait in `pending` at once.
    pub max_pending: u32,
    /// Pending devices from one address: a newer one replaces its oldest.
    pub max_pending_per_address: u32,
    /// Connections at once from one address.
    pub max_connections_per_address: u32,
    /// Frames per second one device may send over all its connections
    /// together; beyond, its connections are slowed (not dropped) and
    /// `device.flood` is raised.
    pub device_frames_per_s: u32,
    /// Bytes per second one device may send, likewise.
    pub device_bytes_per_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 8192,
            max_frame_bytes: vigil_protocol::MAX_FRAME_LEN,
            frames_per_s: 2000,
            handshake_timeout_s: 10,
            idle_timeout_s: 120,
            unknown_per_minute: 60,
            unknown_per_address_per_minute: 4,
            max_pending: 256,
            max_pending_per_address: 4,
            max_connections_per_address: 64,
            device_frames_per_s: 500,
            device_bytes_per_s: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Sink {
    /// JSON lines to a file, or stdout with `path = "-"`.
    Json { path: PathBuf },
    /// RFC 5424 syslog with structured data.
    Syslog {
        address: SocketAddr,
        #[serde(default)]
        transport: Transport,
    },
    /// ArcSight CEF, carried in syslog messages (the usual SIEM intake), or
    /// written as lines to `path`.
    Cef {
        address: Option<SocketAddr>,
        #[serde(default)]
        transport: Transport,
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            new_archive: false,
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 7443))),
            tls_cert: None,
            tls_key: None,
            plain_listen: None,
            insecure_plaintext: false,
            serial: Vec::new(),
            metrics_listen: None,
            limits: Limits::default(),
            retention_days: 30,
            rollup_every_s: 3600,
            checkpoint_every_s: 300,
            silence_s: 300,
            loss_grace_s: 120,
            clock_skew_s: 300,
            sinks: Vec::new(),
            detect: Detect::default(),
            access: Access::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// A configuration file is at most this large (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a configuration file: a regular file (a FIFO or device in its
/// place would block or never end) of at most `MAX_CONFIG_BYTES`.
fn read_config(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Refuses nesting deeper than any configuration has before the
/// (recursive) parser runs: 100,000 `[` would overflow its stack.
fn check_nesting(text: &str) -> Result<(), String> {
    use vigil_protocol::nesting::{too_deep, MAX_DEPTH};
    match too_deep(text, MAX_DEPTH) {
        Some(line) => Err(format!(
            "line {line}: arrays or tables nested deeper than {MAX_DEPTH}"
        )),
        None => Ok(()),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        check_nesting(text)?;
        basic_toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks the combination of options; names the offending field.
    ///
    /// The timeouts' upper bounds: a TLS handshake takes milliseconds even
    /// on a slow device, and an agent sends a frame at least every
    /// `batch * interval_ms` (10 s by default).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        if self.plain_listen.is_some() && !self.insecure_plaintext {
            return bad(
                "plain_listen",
                "plain TCP needs `insecure_plaintext = true` (lab use only)",
            );
        }
        if self.listen.is_none() && self.plain_listen.is_none() && self.serial.is_empty() {
            return bad(
                "listen",
                "nothing to listen on: set listen, plain_listen or a [[serial]] port",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "tls_cert and tls_key go together");
        }
        let l = &self.limits;
        if l.max_frame_bytes < 80 || l.max_frame_bytes > vigil_protocol::MAX_FRAME_LEN {
            return bad("limits.max_frame_bytes", "must be within 80..=4096");
        }
        if l.unknown_per_address_per_minute == 0 {
            return bad(
                "limits.unknown_per_address_per_minute",
                "must be at least 1",
            );
        }
        if l.max_connections_per_address == 0 {
            return bad("limits.max_connections_per_address", "must be at least 1");
        }
        if l.device_frames_per_s == 0 {
            return bad("limits.device_frames_per_s", "must be at least 1");
        }
        if l.device_bytes_per_s < 4096 {
            return bad(
                "limits.device_bytes_per_s",
                "must be at least 4096 (one frame)",
            );
        }
        if l.max_pending_per_address == 0 {
            return bad("limits.max_pending_per_address", "must be at least 1");
        }
        if l.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if l.frames_per_s == 0 {
            return bad("limits.frames_per_s", "must be at least 1");
        }
        // A timeout is the slow-client defence: zero would close every
        // connection, a huge one would switch the defence off.
        if !(1..=MAX_HANDSHAKE_TIMEOUT_S).contains(&l.handshake_timeout_s) {
            return bad(
                "limits.handshake_timeout_s",
                &format!("must be within 1..={MAX_HANDSHAKE_TIMEOUT_S} s"),
            );
        }
        if !(1..=MAX_IDLE_TIMEOUT_S).contains(&l.idle_timeout_s) {
            return bad(
                "limits.idle_timeout_s",
                &format!("must be within 1..={MAX_IDLE_TIMEOUT_S} s (the time a connection may go without a complete frame)"),
            );
        }
        if self.retention_days == 0 {
            return bad("retention_days", "must be at least 1");
        }
        if self.rollup_every_s == 0 {
            return bad("rollup_every_s", "must be at least 1");
        }
        if !(60..=86_400).contains(&self.checkpoint_every_s) {
            return bad(
                "checkpoint_every_s",
                "must be within 60..=86400 s (how often a signed checkpoint goes to the sinks)",
            );
        }
        if self.silence_s == 0 {
            return bad("silence_s", "must be at least 1");
        }
        if !(10..=86_400).contains(&self.clock_skew_s) {
            return bad(
                "clock_skew_s",
                "must be within 10..=86400 s (how far a device clock may be from the collector's)",
            );
        }
        for s in &self.sinks {
            if let Sink::Cef { address, path, .. } = s {
                if address.is_some() == path.is_some() {
                    return bad("sinks", "a cef sink takes exactly one of address or path");
                }
            }
            // A file sink in a folder that does not exist would fail at
            // every event; say so at start instead.
            let file = match s {
                Sink::Json { path } => Some(path),
                Sink::Cef { path: Some(p), .. } => Some(p),
                _ => None,
            };
            if let Some(p) = file.filter(|p| p.as_os_str() != "-") {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                if dir.is_some_and(|d| !d.is_dir()) {
                    return bad(
                        "sinks",
                        &format!("{}: its folder does not exist", p.display()),
                    );
                }
            }
        }
        for p in &self.serial {
            if p.baud == 0 {
                return bad("serial.baud", "must be positive");
            }
        }
        self.detect.policy()?;
        self.access.grants()?;
        // A baseline learns from the raw samples archived during it.
        if self.detect.baseline_period_s > u64::from(self.retention_days).saturating_mul(86_400) {
            return bad(
                "detect.baseline_period_s",
                "must not be longer than retention_days: the baseline learns from the raw samples",
            );
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("vigil.sqlite")
    }
}

/// Fuzz entry point (`collector/fuzz/`, which includes this file) and the
/// corpus replay below: arbitrary bytes as a configuration file, parsed and
/// validated; neither may panic.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    if let Ok(c) = std::str::from_utf8(data).map(Config::parse) {
        let _ = c.map(|c| c.validate());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn fuzz_corpus_replays() {
        vigil_protocol::fuzzing::replay_corpus(
            env!("CARGO_MANIFEST_DIR"),
            "collector_config",
            fuzz,
        );
    }

    #[test]
    fn timeouts_out_of_range_name_their_own_field() {
        for (text, field) in [
            (
                "[limits]\nhandshake_timeout_s = 0\n",
                "limits.handshake_timeout_s",
            ),
            (
                "[limits]\nhandshake_timeout_s = 61\n",
                "limits.handshake_timeout_s",
            ),
            ("[limits]\nidle_timeout_s = 0\n", "limits.idle_timeout_s"),
            (
                "[limits]\nidle_timeout_s = 1000000\n",
                "limits.idle_timeout_s",
            ),
        ] {
            let c = Config::parse(text).unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let ok =
            Config::parse("[limits]\nhandshake_timeout_s = 60\nidle_timeout_s = 3600\n").unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn a_file_sink_in_a_missing_folder_is_refused() {
        let mut c = Config::default();
        c.sinks.push(Sink::Json {
            path: "/nonexistent-vigil-dir/alerts.jsonl".into(),
        });
        match c.validate() {
            Err(ConfigError::Invalid { field, message }) => {
                assert_eq!(field, "sinks");
                assert!(
                    message.contains("/nonexistent-vigil-dir/alerts.jsonl"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        c.sinks = vec![
            Sink::Json { path: "-".into() },
            Sink::Json {
                path: std::env::temp_dir().join("alerts.jsonl"),
            },
            Sink::Json {
                path: "alerts.jsonl".into(),
            },
        ];
        c.validate().unwrap();
    }

    #[test]
    fn access_rules_parse_and_bad_ones_name_their_field() {
        let c = Config::parse(
            r#"
[access]
timezone = "UTC"
[[access.policy]]
model = "CT-9"
users = ["vendor"]
sources = ["10.20.0.5/32"]
windows = ["Mon-Fri 09:00-17:00", "always"]
"#,
        )
        .unwrap();
        c.validate().unwrap();
        let g = c.access.grants().unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].windows[1], Window::ALWAYS);
        for (bad, field) in [
            ("[[access.policy]]\nusers = [\"a\"]", "access.policy"),
            (
                "[[access.policy]]\ndevice = \"d\"\nmodel = \"m\"",
                "access.policy",
            ),
            (
                "[[access.policy]]\ndevice = \"d\"\nsources = [\"10.0.0.0/33\"]",
                "access.policy.sources",
            ),
            (
                "[[access.policy]]\ndevice = \"d\"\nwindows = [\"Mon-Fri 9-17\"]",
                "access.policy.windows",
            ),
        ] {
            let c = Config::parse(bad).unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(
            Config::parse("[[access.policy]]\nhours = 3").is_err(),
            "unknown fields rejected"
        );
    }

    #[test]
    fn unwatched_metrics_are_names_or_prefixes_of_real_metrics() {
        let c =
            Config::parse("[detect]\nunwatched_metrics = [\"disk.*\", \"net.wlan0.tx_bytes\"]\n")
                .unwrap();
        let p = c.detect.policy().unwrap();
        assert!(!p.watched("disk.read_bytes"));
        assert!(!p.watched("net.wlan0.tx_bytes"));
        assert!(p.watched("net.wlan0.rx_bytes"));
        assert!(p.watched("cpu.busy"));
        for bad in ["dsk.*", "*", "disk.*.bytes", ""] {
            let c = Config::parse(&format!("[detect]\nunwatched_metrics = [\"{bad}\"]\n")).unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { field, .. }) => {
                    assert_eq!(field, "detect.unwatched_metrics", "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"
state_dir = "/tmp/x"
listen = "127.0.0.1:7443"
plain_listen = "127.0.0.1:7080"
insecure_plaintext = true
metrics_listen = "127.0.0.1:9477"
retention_days = 7
[limits]
max_connections = 10
[[serial]]
device = "/dev/ttyS1"
[[sinks]]
type = "json"
path = "-"
[[sinks]]
type = "syslog"
address = "127.0.0.1:514"
transport = "tcp"
[[sinks]]
type = "cef"
path = "/var/log/vigil.cef"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.limits.frames_per_s, 2000);
        assert_eq!(c.serial[0].baud, 115_200);
        assert_eq!(c.sinks.len(), 3);
    }

    #[test]
    fn unknown_fields_and_bad_combinations_are_named() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = Config::parse("[limits]\nmax_conections = 3\n").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
        let c = Config::parse("plain_listen = \"127.0.0.1:7080\"\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("plain_listen"));
        let c = Config::parse("[limits]\nmax_frame_bytes = 9000\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_frame_bytes"));
        let c = Config::parse("[[sinks]]\ntype = \"cef\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("sinks"));
    }
}
