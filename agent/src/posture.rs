//! Hardening checks: insecure listening services, the SSH server's
//! effective configuration, kernel sysctls, accounts, the kernel release.
//! Each has a stable id, a title, pass/fail/not-applicable and evidence.
//! Everything is read under a root directory, so fixture trees work the
//! same as the live system (where `sshd -T` is asked too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vigil_protocol::body::CheckStatus;

use crate::sample::sockets::Entry;

/// Which checks run and what they expect (the `[posture]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureConfig {
    /// How often the checks run (they also run at start and when a watched
    /// configuration file changes).
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Ports the device legitimately serves although they are on the
    /// insecure list (e.g. 80 for a redirect to HTTPS).
    #[serde(default)]
    pub allow_ports: Vec<u16>,
    /// The device routes packets: `net.ipv4.ip_forward=1` is expected.
    #[serde(default)]
    pub routes: bool,
    /// Check ids not to run (reported as not applicable, with the reason).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Lowest acceptable kernel release (e.g. "5.10"); without it the
    /// release is only reported, for the collector's policy.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

fn default_interval_s() -> u64 {
    3600
}

impl Default for PostureConfig {
    fn default() -> Self {
        PostureConfig {
            interval_s: default_interval_s(),
            allow_ports: Vec::new(),
            routes: false,
            skip: Vec::new(),
            min_kernel: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub id: &'static str,
    pub title: String,
    pub status: CheckStatus,
    pub evidence: String,
}

fn check(id: &'static str, title: &str, status: CheckStatus, evidence: impl Into<String>) -> Check {
    Check {
        id,
        title: title.to_string(),
        status,
        evidence: evidence.into(),
    }
}

/// Every check id, in report order.
pub const IDS: &[&str] = &[
    "service.telnet",
    "service.ftp",
    "service.tftp",
    "service.http",
    "service.r-services",
    "service.vnc",
    "service.smb",
    "service.rdp",
    "ssh.password-auth",
    "ssh.kbd-interactive",
    "ssh.root-login",
    "ssh.empty-passwords",
    "ssh.pubkey-auth",
    "kernel.aslr",
    "kernel.kptr-restrict",
    "kernel.dmesg-restrict",
    "kernel.ptrace-scope",
    "net.ip-forward",
    "net.ipv4-redirects",
    "net.ipv6-redirects",
    "fs.protected-symlinks",
    "fs.protected-hardlinks",
    "accounts.uid0",
    "accounts.empty-password",
    "kernel.release",
];

/// Insecure services: id, title, protocol (0 TCP, 1 UDP), ports.
const SERVICES: &[(&str, &str, u8, &[u16])] = &[
    ("service.telnet", "no telnet server (23/tcp)", 0, &[23]),
    ("service.ftp", "no FTP server (21/tcp)", 0, &[21]),
    ("service.tftp", "no TFTP server (69/udp)", 1, &[69]),
    (
        "service.http",
        "no plain HTTP (80, 8080/tcp)",
        0,
        &[80, 8080],
    ),
    (
        "service.r-services",
        "no rexec/rlogin/rsh (512-514/tcp)",
        0,
        &[512, 513, 514],
    ),
    (
        "service.vnc",
        "no VNC (5900-5909/tcp)",
        0,
        &[5900, 5901, 5902, 5903, 5904, 5905, 5906, 5907, 5908, 5909],
    ),
    ("service.smb", "no SMB (139, 445/tcp)", 0, &[139, 445]),
    ("service.rdp", "no RDP (3389/tcp)", 0, &[3389]),
];

fn addr_text(a: &[u8], port: u16) -> String {
    match a.len() {
        4 => format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3]),
        _ => {
            let mut b = [0u8; 16];
            for (o, i) in b.iter_mut().zip(a) {
                *o = *i;
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        }
    }
}

/// Insecure-service checks against the socket table (`kind` 0 = listening).
pub fn services(table: &BTreeSet<Entry>, cfg: &PostureConfig) -> Vec<Check> {
    SERVICES
        .iter()
        .map(|&(id, title, proto, ports)| {
            let hits: Vec<String> = table
                .iter()
                .filter(|e| e.kind == 0 && e.proto == proto && ports.contains(&e.local.1))
                .filter(|e| !cfg.allow_ports.contains(&e.local.1))
                .map(|e| {
                    let who = if e.process.is_empty() {
                        "unknown process".to_string()
                    } else {
                        e.process.clone()
                    };
                    format!(
                        "{} {} by {who}",
                        if proto == 0 { "tcp" } else { "udp" },
                        addr_text(&e.local.0, e.local.1)
                    )
                })
                .collect();
            if hits.is_empty() {
                check(id, title, CheckStatus::Pass, "not listening")
            } else {
                check(
                    id,
                    title,
                    CheckStatus::Fail,
                    format!("listening: {}", hits.join(", ")),
                )
            }
        })
        .collect()
}

/// The SSH server's settings that matter here, each with where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSettings {
    /// Lower-case keyword -> (value, source).
    pub values: std::collections::BTreeMap<String, (String, String)>,
}

const SSH_KEYS: &[&str] = &[
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "challengeresponseauthentication",
    "permitrootlogin",
    "permitemptypasswords",
    "pubkeyauthentication",
];

/// Longest chain of `Include`s followed (sshd's own limit is 16).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Parses `sshd_config` the way sshd reads its global section: keywords
/// are case-insensitive, the first value obtained wins, `Include` is
/// expanded in place (globs in the last component, files in lexical order,
/// relative paths under `/etc/ssh`), `Match` blocks do not apply globally.
pub fn parse_sshd_config(root: &Path, file: &Path) -> Result<SshSettings, String> {
    let mut s = SshSettings::default();
    read_sshd(root, file, &mut s, 0)?;
    Ok(s)
}

fn read_sshd(root: &Path, file: &Path, s: &mut SshSettings, depth: usize) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!("{}: Include nested too deep", file.display()));
    }
    let full = root.join(file.strip_prefix("/").unwrap_or(file));
    let text = std::fs::read_to_string(&full).map_err(|e| format!("{}: {e}", file.display()))?;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (
                k,
                v.trim_start_matches(|c: char| c.is_whitespace() || c == '='),
            ),
            None => (line, ""),
        };
        let key = key.to_ascii_lowercase();
        let value = value.split('#').next().unwrap_or("").trim();
        match key.as_str() {
            "match" => return Ok(()), // the rest of this file is conditional
            "include" => {
                for pattern in value.split_whitespace() {
                    let p = if pattern.starts_with('/') {
                        PathBuf::from(pattern)
                    } else {
                        Path::new("/etc/ssh").join(pattern)
                    };
                    for f in glob_last(root, &p) {
                        read_sshd(root, &f, s, depth + 1)?;
                    }
                }
            }
            k if SSH_KEYS.contains(&k) => {
                let k = if k == "challengeresponseauthentication" {
                    "kbdinteractiveauthentication".to_string()
                } else {
                    key.clone()
                };
                s.values.entry(k).or_insert_with(|| {
                    (
                        value.to_ascii_lowercase(),
                        format!("{}:{}", file.display(), n + 1),
                    )
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Files matching `p` under `root`, where only the last component may hold
/// `*` and `?` wildcards; sorted.
fn glob_last(root: &Path, p: &Path) -> Vec<PathBuf> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![p.to_path_buf()];
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    let full = root.join(dir.strip_prefix("/").unwrap_or(dir));
    let mut out: Vec<PathBuf> = std::fs::read_dir(full)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|d| wildcard(&name, &d.file_name().to_string_lossy()))
        .map(|d| dir.join(d.file_name()))
        .collect();
    out.sort();
    out
}

pub(crate) fn wildcard(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while ti < t.len() {
        match p.get(pi) {
            Some('?') => {
                pi += 1;
                ti += 1;
            }
            Some('*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(sp) => {
                    pi = sp + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|r| r.iter().all(|&c| c == '*'))
}

/// `sshd -T` output (lower-case `keyword value` lines) as settings.
pub fn parse_sshd_t(text: &str) -> SshSettings {
    let mut s = SshSettings::default();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if SSH_KEYS.contains(&k) {
                s.values
                    .entry(k.to_string())
                    .or_insert_with(|| (v.trim().to_ascii_lowercase(), "sshd -T".to_string()));
            }
        }
    }
    s
}

/// The effective SSH settings: `sshd -T` on the live system when sshd is
/// installed and answers, else the configuration files; `None` when the
/// image has no SSH server at all.
fn ssh_settings(root: &Path) -> Option<Result<SshSettings, String>> {
    let live = root == Path::new("/");
    let sshd = ["usr/sbin/sshd", "sbin/sshd", "usr/bin/sshd"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists());
    if live {
        if let Some(bin) = &sshd {
            if let Ok(out) = std::process::Command::new(bin)
                .arg("-T")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
            {
                if out.status.success() {
                    return Some(Ok(parse_sshd_t(&String::from_utf8_lossy(&out.stdout))));
                }
            }
        }
    }
    let conf = Path::new("/etc/ssh/sshd_config");
    if !root.join("etc/ssh/sshd_config").exists() {
        return sshd.map(|_| Err("sshd is installed but /etc/ssh/sshd_config is missing".into()));
    }
    Some(parse_sshd_config(root, conf))
}

/// SSH checks from effective settings (`None`: no SSH server).
pub fn ssh(settings: Option<Result<SshSettings, String>>) -> Vec<Check> {
    // id, title, keyword, OpenSSH's default, accepted values
    let rules: &[(&str, &str, &str, &str, &[&str])] = &[
        (
            "ssh.password-auth",
            "SSH password authentication off",
            "passwordauthentication",
            "yes",
            &["no"],
        ),
        (
            "ssh.kbd-interactive",
            "SSH keyboard-interactive authentication off",
            "kbdinteractiveauthentication",
            "yes",
            &["no"],
        ),
        (
            "ssh.root-login",
            "SSH root login no or key only",
            "permitrootlogin",
            "prohibit-password",
            &["no", "prohibit-password", "without-password"],
        ),
        (
            "ssh.empty-passwords",
            "SSH empty passwords refused",
            "permitemptypasswords",
            "no",
            &["no"],
        ),
        (
            "ssh.pubkey-auth",
            "SSH public-key authentication on",
            "pubkeyauthentication",
            "yes",
            &["yes"],
        ),
    ];
    rules
        .iter()
        .map(|&(id, title, key, default, good)| match &settings {
            None => check(
                id,
                title,
                CheckStatus::NotApplicable,
                "no SSH server in the image",
            ),
            Some(Err(e)) => check(id, title, CheckStatus::Error, e.clone()),
            Some(Ok(s)) => {
                let (value, source) = s
                    .values
                    .get(key)
                    .map_or((default, "OpenSSH default"), |(v, src)| {
                        (v.as_str(), src.as_str())
                    });
                let status = if good.contains(&value) {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                };
                check(id, title, status, format!("{key} {value} ({source})"))
            }
        })
        .collect()
}

/// Kernel sysctls read from `ROOT/proc/sys`.
pub fn sysctls(root: &Path, cfg: &PostureConfig) -> Vec<Check> {
    // id, sysctl, minimum, maximum
    let rules: &[(&str, &str, i64, i64)] = &[
        ("kernel.aslr", "kernel.randomize_va_space", 2, 2),
        ("kernel.kptr-restrict", "kernel.kptr_restrict", 1, 2),
        ("kernel.dmesg-restrict", "kernel.dmesg_restrict", 1, 1),
        ("kernel.ptrace-scope", "kernel.yama.ptrace_scope", 1, 3),
        ("net.ip-forward", "net.ipv4.ip_forward", 0, 0),
        (
            "net.ipv4-redirects",
            "net.ipv4.conf.all.accept_redirects",
            0,
            0,
        ),
        (
            "net.ipv6-redirects",
            "net.ipv6.conf.all.accept_redirects",
            0,
            0,
        ),
        ("fs.protected-symlinks", "fs.protected_symlinks", 1, 1),
        ("fs.protected-hardlinks", "fs.protected_hardlinks", 1, 1),
    ];
    rules
        .iter()
        .map(|&(id, name, lo, hi)| {
            let want = if lo == hi {
                format!("{name}={lo}")
            } else {
                format!("{name}>={lo}")
            };
            if id == "net.ip-forward" && cfg.routes {
                return check(
                    id,
                    &want,
                    CheckStatus::NotApplicable,
                    "the configuration says this device routes",
                );
            }
            let path = root.join("proc/sys").join(name.replace('.', "/"));
            match std::fs::read_to_string(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
                    id,
                    &want,
                    CheckStatus::NotApplicable,
                    format!("{name} does not exist on this kernel"),
                ),
                Err(e) => check(id, &want, CheckStatus::Error, format!("{name}: {e}")),
                Ok(t) => match t.trim().parse::<i64>() {
                    Ok(v) if (lo..=hi).contains(&v) => {
                        check(id, &want, CheckStatus::Pass, format!("{name} = {v}"))
                    }
                    Ok(v) => check(id, &want, CheckStatus::Fail, format!("{name} = {v}")),
                    Err(_) => check(
                        id,
                        &want,
                        CheckStatus::Error,
                        format!("{name}: not a number: {:?}", t.trim()),
                    ),
                },
            }
        })
        .collect()
}

/// UID-0 accounts other than root; accounts without a password hash.
pub fn accounts(root: &Path) -> Vec<Check> {
    let uid0_title = "no UID 0 account other than root";
    let uid0 = match std::fs::read_to_string(root.join("etc/passwd")) {
        Err(e) => check(
            "accounts.uid0",
            uid0_title,
            CheckStatus::NotApplicable,
            format!("/etc/passwd: {e}"),
        ),
        Ok(t) => {
            let extra: Vec<&str> = t
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2) == Some(&"0") && f.first() != Some(&"root"))
                        .then(|| f.first().copied().unwrap_or(""))
                })
                .collect();
            if extra.is_empty() {
                check(
                    "accounts.uid0",
                    uid0_title,
                    CheckStatus::Pass,
                    "only root has UID 0",
                )
            } else {
                check(
                    "accounts.uid0",
                    uid0_title,
                    CheckStatus::Fail,
                    format!("UID 0: {}", extra.join(", ")),
                )
            }
        }
    };
    let empty_title = "no account with an empty password";
    let empty = match std::fs::read_to_string(root.join("etc/shadow")) {
        Err(e) => check(
            "accounts.empty-password",
            empty_title,
            CheckStatus::NotApplicable,
            format!("/etc/shadow not readable: {e}"),
        ),
        Ok(t) => {
            let bad: Vec<&str> = t
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    (f.next() == Some("")).then_some(name)
                })
                .collect();
            if bad.is_empty() {
                check(
                    "accounts.empty-password",
                    empty_title,
                    CheckStatus::Pass,
                    "every account has a hash or is locked",
                )
            } else {
                check(
                    "accounts.empty-password",
                    empty_title,
                    CheckStatus::Fail,
                    format!("no password: {}", bad.join(", ")),
                )
            }
        }
    };
    vec![uid0, empty]
}

/// The numeric components of a release: "5.10.0-23-arm64" -> [5, 10, 0].
pub fn release_numbers(r: &str) -> Vec<u64> {
    r.split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .map_while(|n| n.parse().ok())
        .collect()
}

/// The kernel release, reported for the collector's policy on minimum
/// versions, and held to `min_kernel` when the configuration sets one.
pub fn kernel(root: &Path, cfg: &PostureConfig) -> Check {
    let title = match &cfg.min_kernel {
        Some(m) => format!("kernel release at least {m}"),
        None => "kernel release (reported)".to_string(),
    };
    let release = match std::fs::read_to_string(root.join("proc/sys/kernel/osrelease")) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            return check(
                "kernel.release",
                &title,
                CheckStatus::Error,
                format!("osrelease: {e}"),
            )
        }
    };
    match &cfg.min_kernel {
        Some(min) if release_numbers(&release) < release_numbers(min) => check(
            "kernel.release",
            &title,
            CheckStatus::Fail,
            format!("{release}, below {min}"),
        ),
        _ => check("kernel.release", &title, CheckStatus::Pass, release),
    }
}

/// Runs every check under `root`; `table` is the socket table.
pub fn run(root: &Path, cfg: &PostureConfig, table: &BTreeSet<Entry>) -> Vec<Check> {
    let mut all = services(table, cfg);
    all.extend(ssh(ssh_settings(root)));
    all.extend(sysctls(root, cfg));
    all.extend(accounts(root));
    all.push(kernel(root, cfg));
    for c in &mut all {
        if cfg.skip.iter().any(|s| s == c.id) {
            c.status = CheckStatus::NotApplicable;
            c.evidence = "skipped by the configuration".into();
        }
    }
    all
}

/// Files whose change re-runs the checks (besides the agent's config).
pub fn watched_files(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("etc/ssh/sshd_config")];
    out.extend(
        glob_last(root, Path::new("/etc/ssh/sshd_config.d/*.conf"))
            .iter()
            .map(|p| root.join(p.strip_prefix("/").unwrap_or(p))),
    );
    out
}

pub fn status_name(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Pass => "pass",
        CheckStatus::Fail => "fail",
        CheckStatus::NotApplicable => "n/a",
        CheckStatus::Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_sshd_globs() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(wildcard("*.conf", ".conf"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("a?c*", "abcdef"));
        assert!(!wildcard("a?c", "ac"));
    }

    #[test]
    fn kernel_releases_compare_numerically() {
        assert_eq!(release_numbers("5.10.0-23-arm64"), [5, 10, 0]);
        assert_eq!(release_numbers("6.18.44-fc-v782"), [6, 18, 44]);
        assert!(release_numbers("4.9.337") < release_numbers("4.19"));
        assert!(release_numbers("4.19") <= release_numbers("4.19.0"));
    }

    #[test]
    fn every_check_id_fits_the_wire_and_is_listed() {
        for id in IDS {
            assert!(id.len() <= 32, "{id}");
        }
        let all = run(
            Path::new("/nonexistent-root"),
            &PostureConfig::default(),
            &BTreeSet::new(),
        );
        let ids: Vec<&str> = all.iter().map(|c| c.id).collect();
        assert_eq!(ids, IDS);
    }
}
