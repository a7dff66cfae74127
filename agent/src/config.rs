//! The agent's configuration: a TOML file (unknown fields rejected) whose
//! every option can also be given, or overridden, as a flag. Validation
//! names the offending field; a bad configuration exits 78.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root of the filesystem to observe (`/proc` etc. under it).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Sampling interval.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Samples per frame (1..=16). Latency is at most `batch * interval_ms`.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How often the socket table is read (it changes slowly and costs more).
    #[serde(default = "default_sockets_interval_s")]
    pub sockets_interval_s: u64,
    pub collector: Option<Collector>,
    pub serial: Option<Serial>,
    #[serde(default)]
    pub integrity: Integrity,
    #[serde(default)]
    pub posture: crate::posture::PostureConfig,
    #[serde(default)]
    pub sessions: Sessions,
    /// Soak tests only (`--test-clock`, never from the file).
    #[serde(skip)]
    pub test_clock: Option<TestClock>,
}

/// A fast-forward clock for soak tests: the sampler's time starts at
/// `start_ms` and runs `factor` times faster than real time. Sample and
/// frame times follow it; the sampling, socket and session cadences shrink
/// by the factor (virtual seconds stay seconds). The link's timers stay real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestClock {
    pub start_ms: u64,
    pub factor: u32,
}

impl TestClock {
    /// `START_MS:FACTOR`, the factor 1..=100000.
    pub fn parse(s: &str) -> Option<TestClock> {
        let (start, factor) = s.split_once(':')?;
        let t = TestClock {
            start_ms: start.parse().ok()?,
            factor: factor.parse().ok()?,
        };
        (1..=100_000).contains(&t.factor).then_some(t)
    }
}

/// Logins and privileged sessions: where the login records are and how
/// often sessions are looked for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_sessions_interval_s")]
    pub interval_s: u64,
    /// Current logins (under `root`); absent on many minimal images.
    #[serde(default = "default_utmp")]
    pub utmp: PathBuf,
    /// Login history (under `root`), followed for short sessions and for
    /// records that vanish.
    #[serde(default = "default_wtmp")]
    pub wtmp: PathBuf,
}

fn default_true() -> bool {
    true
}
fn default_sessions_interval_s() -> u64 {
    5
}
fn default_utmp() -> PathBuf {
    PathBuf::from("/var/run/utmp")
}
fn default_wtmp() -> PathBuf {
    PathBuf::from("/var/log/wtmp")
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            enabled: true,
            interval_s: default_sessions_interval_s(),
            utmp: default_utmp(),
            wtmp: default_wtmp(),
        }
    }
}

/// Signed manifests in force and how often the tree is checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integrity {
    /// Minisign public keys (`*.pub`) whose signatures are trusted.
    #[serde(default = "default_trust_dir")]
    pub trust_dir: PathBuf,
    /// Manifest files, each with `FILE.minisig` beside it.
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// Full pass cadence (also at start; config files are watched too).
    #[serde(default = "default_integrity_interval_s")]
    pub interval_s: u64,
    /// Hashing threads; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
}

fn default_trust_dir() -> PathBuf {
    PathBuf::from("/etc/vigil/trust")
}
fn default_integrity_interval_s() -> u64 {
    3600
}

impl Default for Integrity {
    fn default() -> Self {
        Integrity {
            trust_dir: default_trust_dir(),
            manifests: Vec::new(),
            interval_s: default_integrity_interval_s(),
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    /// `host:port`.
    pub address: String,
    /// Name expected in the collector's certificate (with `ca_file`); defaults to the host.
    pub server_name: Option<String>,
    /// SHA-256 of the collector's certificate (DER), hex: the certificate is pinned.
    pub pin_sha256: Option<String>,
    /// PEM file of CA certificates to verify the collector against instead of a pin.
    pub ca_file: Option<PathBuf>,
    /// Plain TCP without TLS. For lab use only; warned about at every connect.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Other collectors, tried in order when this one cannot be reached or
    /// stops acknowledging (`[[collector.failover]]`).
    #[serde(default)]
    pub failover: Vec<Failover>,
    /// Seconds on a failover collector before the agent tries the first one
    /// again (between frames, nothing lost: 10..86400, default 300).
    #[serde(default = "default_failback_s")]
    pub failback_s: u64,
}

/// A failover collector: its own address, and its own pin or server name
/// where it has its own certificate (the CA file and `insecure_plaintext`
/// are the primary's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub address: String,
    pub server_name: Option<String>,
    pub pin_sha256: Option<String>,
}

impl Collector {
    /// Every collector to try, the primary first, each with the TLS
    /// settings it is checked with.
    pub fn endpoints(&self) -> Vec<Collector> {
        let mut all = vec![Collector {
            failover: Vec::new(),
            ..self.clone()
        }];
        for f in &self.failover {
            all.push(Collector {
                address: f.address.clone(),
                server_name: f.server_name.clone(),
                pin_sha256: f.pin_sha256.clone().or_else(|| self.pin_sha256.clone()),
                ca_file: self.ca_file.clone(),
                insecure_plaintext: self.insecure_plaintext,
                failover: Vec::new(),
                failback_s: self.failback_s,
            });
        }
        all
    }
}

pub fn default_failback_s() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil-agent")
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_batch() -> usize {
    10
}
fn default_sockets_interval_s() -> u64 {
    10
}
fn default_baud() -> u32 {
    115_200
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            root: default_root(),
            interval_ms: default_interval_ms(),
            batch: default_batch(),
            sockets_interval_s: default_sockets_interval_s(),
            collector: None,
            serial: None,
            integrity: Integrity::default(),
            posture: crate::posture::PostureConfig::default(),
            sessions: Sessions::default(),
            test_clock: None,
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
fn read_config(path: &std::path::Path) -> std::io::Result<String> {
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

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = read_config(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses the TOML text of a configuration (not yet validated).
    pub fn parse(text: &str) -> Result<Self, String> {
        check_nesting(text)?;
        basic_toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks everything `check` relies on (all but the link).
    pub fn validate_local(&self) -> Result<(), ConfigError> {
        if !(1..=604_800).contains(&self.integrity.interval_s) {
            return Err(invalid(
                "integrity.interval_s",
                "must be between 1 and 604800",
            ));
        }
        if self.integrity.threads > 64 {
            return Err(invalid(
                "integrity.threads",
                "must be between 0 (one per core) and 64",
            ));
        }
        if self.integrity.manifests.len() > vigil_protocol::body::MAX_MANIFESTS {
            return Err(invalid(
                "integrity.manifests",
                format!("at most {} manifests", vigil_protocol::body::MAX_MANIFESTS),
            ));
        }
        if !(1..=604_800).contains(&self.posture.interval_s) {
            return Err(invalid(
                "posture.interval_s",
                "must be between 1 and 604800",
            ));
        }
        if let Some(m) = &self.posture.min_kernel {
            if crate::posture::release_numbers(m).is_empty() {
                return Err(invalid(
                    "posture.min_kernel",
                    "must be a release such as \"5.10\"",
                ));
            }
        }
        if let Some(id) = self
            .posture
            .skip
            .iter()
            .find(|id| !crate::posture::IDS.contains(&id.as_str()))
        {
            return Err(invalid("posture.skip", format!("unknown check id `{id}`")));
        }
        Ok(())
    }

    /// Checks everything a running agent relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_local()?;
        if !(10..=3_600_000).contains(&self.interval_ms) {
            return Err(invalid("interval_ms", "must be between 10 and 3600000"));
        }
        if !(1..=vigil_protocol::sample::MAX_SAMPLES).contains(&self.batch) {
            return Err(invalid(
                "batch",
                format!(
                    "must be between 1 and {}",
                    vigil_protocol::sample::MAX_SAMPLES
                ),
            ));
        }
        if !(1..=86_400).contains(&self.sessions.interval_s) {
            return Err(invalid(
                "sessions.interval_s",
                "must be between 1 and 86400",
            ));
        }
        if !(1..=86_400).contains(&self.sockets_interval_s) {
            return Err(invalid("sockets_interval_s", "must be between 1 and 86400"));
        }
        match (&self.collector, &self.serial) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "collector",
                    "set either [collector] or [serial], not both",
                ))
            }
            (None, None) => return Err(invalid("collector", "set [collector] (TCP) or [serial]")),
            _ => {}
        }
        if let Some(c) = &self.collector {
            let host_port = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_some()
            };
            if !host_port(&c.address) {
                return Err(invalid("collector.address", "must be host:port"));
            }
            if c.failover.iter().any(|f| !host_port(&f.address)) {
                return Err(invalid("collector.failover.address", "must be host:port"));
            }
            if c.failover.len() > 8 {
                return Err(invalid(
                    "collector.failover",
                    "at most 8 failover collectors",
                ));
            }
            if c.failover.iter().any(|f| {
                f.pin_sha256
                    .as_deref()
                    .is_some_and(|p| parse_pin(p).is_none())
            }) {
                return Err(invalid(
                    "collector.failover.pin_sha256",
                    "must be 64 hex digits (colons allowed)",
                ));
            }
            if c.failover.iter().any(|f| f.pin_sha256.is_some()) && c.pin_sha256.is_none() {
                return Err(invalid(
                    "collector.failover.pin_sha256",
                    "a failover pin needs a pinned primary (pin_sha256), not a CA file",
                ));
            }
            if !(10..=86_400).contains(&c.failback_s) {
                return Err(invalid(
                    "collector.failback_s",
                    "must be between 10 and 86400",
                ));
            }
            let pinned = c.pin_sha256.is_some();
            let ca = c.ca_file.is_some();
            match (c.insecure_plaintext, pinned, ca) {
                (true, false, false) => {}
                (true, _, _) => {
                    return Err(invalid(
                        "collector.insecure_plaintext",
                        "cannot be combined with a pin or CA file",
                    ))
                }
                (false, true, true) => {
                    return Err(invalid(
                        "collector.pin_sha256",
                        "set pin_sha256 or ca_file, not both",
                    ))
                }
                (false, false, false) => {
                    return Err(invalid(
                        "collector.pin_sha256",
                        "set pin_sha256 or ca_file (or insecure_plaintext for a lab)",
                    ))
                }
                _ => {}
            }
            if let Some(p) = &c.pin_sha256 {
                if parse_pin(p).is_none() {
                    return Err(invalid(
                        "collector.pin_sha256",
                        "must be 64 hex digits (colons allowed)",
                    ));
                }
            }
        }
        if let Some(s) = &self.serial {
            if s.baud == 0 {
                return Err(invalid("serial.baud", "must be positive"));
            }
        }
        Ok(())
    }
}

/// A SHA-256 fingerprint as 64 hex digits, optionally colon-separated.
pub fn parse_pin(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|&c| c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, String> {
        let c: Config = basic_toml::from_str(t).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn failover_collectors_inherit_what_they_do_not_set() {
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let c = parse(&format!(
            "[collector]\naddress = \"c:7443\"\npin_sha256 = \"{a}\"\n\
             [[collector.failover]]\naddress = \"d:7443\"\npin_sha256 = \"{b}\"\n\
             [[collector.failover]]\naddress = \"e:7443\"\n"
        ))
        .unwrap();
        let all = c.collector.unwrap().endpoints();
        let got: Vec<_> = all
            .iter()
            .map(|e| (e.address.as_str(), e.pin_sha256.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("c:7443", Some(a.as_str())),
                ("d:7443", Some(b.as_str())),
                ("e:7443", Some(a.as_str()))
            ]
        );
        assert!(all
            .iter()
            .all(|e| e.failover.is_empty() && e.failback_s == 300));
    }

    #[test]
    fn good_configs_parse_and_bad_ones_name_the_field() {
        let pin = "ab".repeat(32);
        let c = parse(&format!(
            "[collector]\naddress = \"c:7443\"\npin_sha256 = \"{pin}\"\n"
        ))
        .unwrap();
        assert_eq!(c.interval_ms, 1000);
        assert!(parse("[serial]\ndevice = \"/dev/ttyS0\"\n").is_ok());
        for (text, field) in [
            ("bogus = 1\n[serial]\ndevice = \"/dev/x\"\n", "bogus"),
            ("[serial]\ndevice = \"/dev/x\"\nspeed = 9600\n", "speed"),
            (
                "interval_ms = 5\n[serial]\ndevice = \"/dev/x\"\n",
                "interval_ms",
            ),
            ("batch = 17\n[serial]\ndevice = \"/dev/x\"\n", "batch"),
            (
                "[collector]\naddress = \"nohost\"\ninsecure_plaintext = true\n",
                "collector.address",
            ),
            ("[collector]\naddress = \"c:1\"\n", "collector.pin_sha256"),
            (
                "[collector]\naddress = \"c:1\"\npin_sha256 = \"abc\"\n",
                "collector.pin_sha256",
            ),
            ("", "collector"),
            (
                "[collector]\naddress = \"c:1\"\ninsecure_plaintext = true\n[[collector.failover]]\naddress = \"d\"\n",
                "collector.failover.address",
            ),
            (
                "[collector]\naddress = \"c:1\"\ninsecure_plaintext = true\nfailback_s = 1\n",
                "collector.failback_s",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(field), "{text:?}: {err}");
        }
    }
}
