//! Which manifests are in force on the device: signature by a key in the
//! trust directory, no rollback below the highest version accepted before
//! for the same issuer and scope (persisted in the state directory), then a
//! check of the tree. Also the agent's coverage of its own binary and
//! configuration, which needs no manifest.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vigil_protocol::body::{Class, FindingKind, ManifestVersion};
use vigil_protocol::manifest::Manifest;
use vigil_protocol::minisign::{MinisignError, PublicKey, SignatureFile};

use super::Found;
use crate::sample::fit;

/// Highest accepted versions, by (issuer, scope).
const VERSIONS_FILE: &str = "manifest-versions";
/// Largest manifest read (a whole firmware image lists ~10^5 entries).
const MAX_MANIFEST: u64 = 64 << 20;

/// The public keys in the trust directory (`*.pub`, minisign format).
#[derive(Debug, Default)]
pub struct Keys(pub Vec<PublicKey>);

impl Keys {
    /// Loads every `*.pub` in `dir`. A key file that does not parse is an
    /// error: a typo in the trust directory must not go unnoticed.
    pub fn load(dir: &Path) -> anyhow::Result<Keys> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("trust directory {}: {e}", dir.display()))?;
        let mut keys = Vec::new();
        let mut names: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|d| d.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        names.sort();
        for p in names {
            let text = read_regular(&p, MAX_SMALL)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|(_, why)| anyhow::anyhow!("{why}"))?;
            let k = PublicKey::parse(&text).map_err(|e| {
                anyhow::anyhow!("{}: not a minisign public key ({e:?})", p.display())
            })?;
            keys.push(k);
        }
        Ok(Keys(keys))
    }
}

/// The rollback record in the state directory: one line per issuer and
/// scope, `VERSION<TAB>ISSUER<TAB>SCOPE` (header values never hold a tab).
#[derive(Debug, Default)]
pub struct Versions {
    path: Option<PathBuf>,
    seen: BTreeMap<(String, String), u64>,
}

impl Versions {
    pub fn load(state_dir: &Path) -> anyhow::Result<Versions> {
        let path = state_dir.join(VERSIONS_FILE);
        let mut seen = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let mut f = line.splitn(3, '\t');
                    let parsed = (|| {
                        let v = f.next()?.parse::<u64>().ok()?;
                        Some((v, f.next()?.to_string(), f.next()?.to_string()))
                    })();
                    let (v, issuer, scope) = parsed.ok_or_else(|| {
                        anyhow::anyhow!("{} line {}: malformed", path.display(), n + 1)
                    })?;
                    seen.insert((issuer, scope), v);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
        Ok(Versions {
            path: Some(path),
            seen,
        })
    }

    /// In memory only (`manifest verify` on a build host has no state).
    pub fn none() -> Versions {
        Versions::default()
    }

    /// Accepts `version` unless a higher one was accepted before; records it
    /// (durably) when it is the new highest.
    pub fn accept(&mut self, issuer: &str, scope: &str, version: u64) -> Result<(), u64> {
        let key = (issuer.to_string(), scope.to_string());
        match self.seen.get(&key) {
            Some(&old) if old > version => return Err(old),
            Some(&old) if old == version => return Ok(()),
            _ => {}
        }
        self.seen.insert(key, version);
        if let Err(e) = self.save() {
            log::error!("cannot record accepted manifest versions: {e}");
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = String::new();
        for ((issuer, scope), v) in &self.seen {
            text.push_str(&format!("{v}\t{issuer}\t{scope}\n"));
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// The result of one manifest in one pass.
#[derive(Debug, Clone)]
pub struct Report {
    /// The manifest file.
    pub source: PathBuf,
    pub manifest: ManifestVersion,
    pub checked: u32,
    pub findings: Vec<Found>,
}

/// The class a manifest is about (its entries' class; `config` if empty).
pub fn class_of(m: &Manifest) -> Class {
    m.entries.first().map_or(Class::Config, |e| e.class)
}

pub fn version_of(m: &Manifest) -> ManifestVersion {
    ManifestVersion {
        class: class_of(m),
        issuer: fit(&m.issuer),
        scope: fit(&m.scope),
        version: m.version,
    }
}

/// Why a manifest is not in force.
#[derive(Debug)]
pub enum Refused {
    /// Cannot be read or parsed at all (an error, not a finding).
    Unusable(String),
    /// A finding about the manifest itself (signature, trust, rollback).
    Finding(Box<Report>),
}

/// Largest signature or trust key read.
const MAX_SMALL: u64 = 64 << 10;

/// Reads a regular file of at most `max` bytes without following a
/// symlink and without blocking on a FIFO or device put in its place: the
/// type is checked on the open descriptor before a byte is read. On
/// failure, the finding it is (missing, not a regular file, unreadable)
/// and why.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, (FindingKind, String)> {
    let why = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let kind = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => FindingKind::Missing,
                (_, Some(libc::ELOOP)) => FindingKind::TypeChanged,
                _ => FindingKind::Unreadable,
            };
            (kind, why(&e))
        })?;
    let meta = f
        .metadata()
        .map_err(|e| (FindingKind::Unreadable, why(&e)))?;
    if !meta.is_file() {
        return Err((FindingKind::TypeChanged, why(&"not a regular file")));
    }
    if meta.len() > max {
        return Err((
            FindingKind::Unreadable,
            why(&format!("{} bytes, more than {max}", meta.len())),
        ));
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, max + 1), &mut out)
        .map_err(|e| (FindingKind::Unreadable, why(&e)))?;
    if out.len() as u64 > max {
        return Err((
            FindingKind::Unreadable,
            why(&format!("more than {max} bytes")),
        ));
    }
    Ok(out)
}

/// The detached signature's path: `MANIFEST.minisig`.
pub fn sig_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Reads, authenticates and rollback-checks one manifest.
pub fn open(path: &Path, keys: &Keys, versions: &mut Versions) -> Result<Manifest, Refused> {
    // A manifest or signature that is missing, replaced by something that
    // is not a regular file, or unreadable is a finding sent on, never
    // only a local error: deleting a `.minisig` must not switch the check
    // off quietly.
    let unknown = ManifestVersion {
        class: Class::Config,
        issuer: fit("unknown"),
        scope: fit(&path.display().to_string()),
        version: 0,
    };
    let refused = |named: &ManifestVersion, at: &Path, kind: FindingKind| {
        Refused::Finding(Box::new(Report {
            source: path.to_path_buf(),
            manifest: named.clone(),
            checked: 0,
            findings: vec![Found {
                path: std::os::unix::ffi::OsStrExt::as_bytes(at.as_os_str()).to_vec(),
                kind,
            }],
        }))
    };
    let bytes = read_regular(path, MAX_MANIFEST).map_err(|(kind, why)| {
        log::error!("integrity: {why}");
        refused(&unknown, path, kind)
    })?;
    // Parsed before it is trusted only to name it in a finding.
    let unverified = Manifest::parse(&bytes);
    let named = match &unverified {
        Ok(m) => version_of(m),
        Err(_) => unknown.clone(),
    };
    let sp = sig_path(path);
    let sig_text = read_regular(&sp, MAX_SMALL)
        .map_err(|(kind, why)| {
            log::error!("integrity: {why}");
            refused(&named, &sp, kind)
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())?;
    let finding = |kind: FindingKind| refused(&named, path, kind);
    let sig = SignatureFile::parse(&sig_text).map_err(|_| finding(FindingKind::BadSignature))?;
    let key = keys
        .0
        .iter()
        .find(|k| k.key_id == sig.key_id)
        .ok_or_else(|| finding(FindingKind::UntrustedKey))?;
    match sig.verify(key, &bytes) {
        Ok(_) => {}
        Err(MinisignError::KeyMismatch) => return Err(finding(FindingKind::UntrustedKey)),
        Err(_) => return Err(finding(FindingKind::BadSignature)),
    }
    let m = unverified.map_err(|e| {
        Refused::Unusable(format!(
            "{}: signed but not a manifest: {e}",
            path.display()
        ))
    })?;
    versions
        .accept(&m.issuer, &m.scope, m.version)
        .map_err(|accepted| {
            finding(FindingKind::Rollback {
                accepted,
                offered: m.version,
            })
        })?;
    Ok(m)
}

/// The agent's own binary and configuration file, hashed at start and
/// compared on every pass: covered even on a device with no manifest.
#[derive(Debug)]
pub struct SelfCheck {
    files: Vec<(PathBuf, [u8; 32])>,
}

impl SelfCheck {
    pub fn start(config: Option<&Path>) -> SelfCheck {
        let mut files = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let exe = std::fs::read_link("/proc/self/exe").or_else(|_| std::env::current_exe());
        for p in exe.ok().into_iter().chain(config.map(Path::to_path_buf)) {
            match super::hash_file(&p, &mut buf) {
                Ok((h, _)) => files.push((p, h)),
                Err(e) => log::warn!("self-check: cannot hash {}: {e}", p.display()),
            }
        }
        SelfCheck { files }
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    pub fn check(&self) -> Report {
        let mut buf = vec![0u8; 1 << 16];
        let mut findings = Vec::new();
        for (p, expected) in &self.files {
            let path = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec();
            let kind = match super::hash_file(p, &mut buf) {
                Ok((actual, _)) if actual == *expected => continue,
                Ok((actual, _)) => FindingKind::Modified {
                    expected: *expected,
                    actual,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => FindingKind::Missing,
                Err(_) => FindingKind::Unreadable,
            };
            findings.push(Found { path, kind });
        }
        Report {
            source: PathBuf::from("(self)"),
            manifest: self_version(),
            checked: u32::try_from(self.files.len()).unwrap_or(u32::MAX),
            findings,
        }
    }
}

/// How the self-check names itself in `Integrity` frames.
pub fn self_version() -> ManifestVersion {
    ManifestVersion {
        class: Class::Config,
        issuer: fit("vigil-agent"),
        scope: fit("self"),
        version: 0,
    }
}
