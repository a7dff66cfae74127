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
use vigil_protocol::SigningKey;

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

/// The rollback record in the state directory, signed by the device key
/// (agent/README.md, "The rollback record"):
///
/// ```text
/// vigil-agent manifest-versions 1
/// v<TAB>VERSION<TAB>ISSUER<TAB>SCOPE        highest version accepted
/// p<TAB>PATH<TAB>CLASS<TAB>ISSUER<TAB>SCOPE what the manifest at PATH is
/// sig<TAB>ED25519 SIGNATURE (hex) over "vigil-agent manifest-versions\n" and every line before
/// ```
///
/// Header values and configured paths never hold a tab or a newline (a
/// path that does is not bound). A record that is missing after the first
/// run, unsigned, badly signed or unreadable is *lost*: every manifest
/// report then carries a finding naming it, and the file is left as it is
/// (evidence) until an operator runs `vigil-agent manifest reset-record`.
#[derive(Debug, Default)]
pub struct Versions {
    path: Option<PathBuf>,
    key: Option<SigningKey>,
    seen: BTreeMap<(String, String), u64>,
    /// Manifest path -> (class, issuer, scope) first accepted there.
    bound: BTreeMap<String, (String, String, String)>,
    /// Why the record on disk cannot be trusted, as a finding.
    lost: Option<(FindingKind, String)>,
    /// The record's bytes as last read and verified or written: what
    /// `recheck` expects to find.
    on_disk: Option<Vec<u8>>,
}

const RECORD_HEADER: &str = "vigil-agent manifest-versions 1\n";
const RECORD_DOMAIN: &[u8] = b"vigil-agent manifest-versions\n";

impl Versions {
    /// Reads and checks the record. `first_run`: the boot counter says the
    /// agent never ran before, so a missing record is simply new.
    pub fn load(state_dir: &Path, key: &SigningKey, first_run: bool) -> Versions {
        let path = state_dir.join(VERSIONS_FILE);
        let mut v = Versions {
            path: Some(path.clone()),
            key: Some(key.clone()),
            ..Versions::default()
        };
        match read_regular(&path, MAX_SMALL) {
            Ok(bytes) => match v.parse(&bytes) {
                Ok(()) => v.on_disk = Some(bytes),
                Err(why) => {
                    v.seen.clear();
                    v.bound.clear();
                    v.lose(
                        FindingKind::BadSignature,
                        format!("{}: {why}", path.display()),
                    );
                }
            },
            Err((FindingKind::Missing, _)) if first_run => {
                if let Err(e) = v.save() {
                    log::error!("cannot create the rollback record {}: {e}", path.display());
                }
            }
            Err((FindingKind::Missing, why)) => {
                v.lose(
                    FindingKind::Missing,
                    format!("{why} (the agent ran here before)"),
                );
            }
            Err((kind, why)) => v.lose(kind, why),
        }
        v
    }

    /// Before each pass: the record must still be what this agent last
    /// read or wrote. Deleted, replaced or edited under a running agent, it
    /// is lost from then on.
    pub fn recheck(&mut self) {
        let (Some(path), Some(expected), None) = (&self.path, &self.on_disk, &self.lost) else {
            return;
        };
        match read_regular(path, MAX_SMALL) {
            Ok(b) if b == *expected => {}
            Ok(_) => {
                let why = format!(
                    "{}: changed by something other than the agent",
                    path.display()
                );
                self.lose(FindingKind::BadSignature, why);
            }
            Err((kind, why)) => self.lose(kind, why),
        }
    }

    fn lose(&mut self, kind: FindingKind, why: String) {
        log::error!(
            "integrity: the rollback record cannot be trusted ({why}): every manifest report names \
             it until `vigil-agent manifest reset-record`; versions are held in memory only"
        );
        self.lost = Some((kind, why));
    }

    /// Parses a signed record into `self`.
    fn parse(&mut self, bytes: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let body_end = text.rfind("sig\t").ok_or("not signed")?;
        let (body, sig_line) = text.split_at(body_end);
        let sig_hex = sig_line.strip_prefix("sig\t").unwrap_or("").trim_end();
        let mut sig = [0u8; 64];
        if sig_hex.len() != 128 {
            return Err("malformed signature".into());
        }
        for (o, i) in sig.iter_mut().zip((0..128).step_by(2)) {
            *o = sig_hex
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("malformed signature")?;
        }
        let key = self.key.as_ref().ok_or("no device key")?.verifying_key();
        let mut msg = RECORD_DOMAIN.to_vec();
        msg.extend_from_slice(body.as_bytes());
        key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| "its signature by the device key does not verify".to_string())?;
        let mut lines = body.lines();
        if lines.next() != Some(RECORD_HEADER.trim_end()) {
            return Err("unknown format".into());
        }
        for (n, line) in lines.enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["v", ver, issuer, scope] => {
                    let ver = ver
                        .parse::<u64>()
                        .map_err(|_| format!("line {}: malformed", n + 2))?;
                    self.seen.insert(((*issuer).into(), (*scope).into()), ver);
                }
                ["p", path, class, issuer, scope] => {
                    self.bound.insert(
                        (*path).into(),
                        ((*class).into(), (*issuer).into(), (*scope).into()),
                    );
                }
                _ => return Err(format!("line {}: malformed", n + 2)),
            }
        }
        Ok(())
    }

    /// In memory only (`manifest verify` on a build host has no state).
    pub fn none() -> Versions {
        Versions::default()
    }

    /// Why the record cannot be trusted, if it cannot: the finding each
    /// manifest report carries, at the record's path.
    pub fn lost(&self) -> Option<super::Found> {
        let (kind, _) = self.lost.as_ref()?;
        let path = self.path.as_ref()?;
        Some(super::Found {
            path: std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec(),
            kind: kind.clone(),
        })
    }

    /// Binds the manifest file `path` to what it was first accepted as
    /// (class, issuer, scope): another validly signed manifest cannot stand
    /// in for it. `Err` names what it was bound to.
    pub fn bind(
        &mut self,
        path: &Path,
        class: &str,
        issuer: &str,
        scope: &str,
    ) -> Result<(), String> {
        let Some(p) = path.to_str().filter(|p| !p.contains(['\t', '\n'])) else {
            return Ok(());
        };
        let now = (class.to_string(), issuer.to_string(), scope.to_string());
        match self.bound.get(p) {
            Some(was) if *was == now => Ok(()),
            Some((c, i, s)) => Err(format!("{c} manifest of {i}, scope {s}")),
            None => {
                self.bound.insert(p.to_string(), now);
                self.persist();
                Ok(())
            }
        }
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
        self.persist();
        Ok(())
    }

    fn persist(&mut self) {
        // A lost record stays as found until an operator acts.
        if self.lost.is_none() {
            if let Err(e) = self.save() {
                log::error!("cannot record accepted manifest versions: {e}");
            }
        }
    }

    /// The signed text of the record.
    fn text(&self, key: &SigningKey) -> String {
        use ed25519_dalek::Signer;
        let mut text = RECORD_HEADER.to_string();
        for ((issuer, scope), v) in &self.seen {
            text.push_str(&format!("v\t{v}\t{issuer}\t{scope}\n"));
        }
        for (path, (class, issuer, scope)) in &self.bound {
            text.push_str(&format!("p\t{path}\t{class}\t{issuer}\t{scope}\n"));
        }
        let mut msg = RECORD_DOMAIN.to_vec();
        msg.extend_from_slice(text.as_bytes());
        let sig = key.sign(&msg).to_bytes();
        text.push_str("sig\t");
        for b in sig {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
        text
    }

    fn save(&mut self) -> std::io::Result<()> {
        let (Some(path), Some(key)) = (&self.path, &self.key) else {
            return Ok(());
        };
        let text = self.text(key);
        let path = path.clone();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        self.on_disk = Some(text.into_bytes());
        Ok(())
    }

    /// `vigil-agent manifest reset-record`: an operator's fresh, empty,
    /// signed record in place of a lost one (what was there is kept beside
    /// it as `manifest-versions.lost`). The next run records the manifests
    /// it accepts from there.
    pub fn reset(state_dir: &Path, key: &SigningKey) -> std::io::Result<PathBuf> {
        let path = state_dir.join(VERSIONS_FILE);
        let lost = state_dir.join("manifest-versions.lost");
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::rename(&path, &lost)?,
            Err(_) => {}
        }
        Versions {
            path: Some(path.clone()),
            key: Some(key.clone()),
            ..Versions::default()
        }
        .save()?;
        Ok(path)
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
    let named = version_of(&m);
    versions
        .bind(path, named.class.name(), &m.issuer, &m.scope)
        .map_err(|was| {
            log::error!(
                "integrity: {} is bound to a {was}; a validly signed manifest of another class or scope is not accepted in its place",
                path.display()
            );
            finding(FindingKind::ScopeChanged)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_record_is_signed_kept_and_binds_paths() {
        let d = dir("kept");
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut v = Versions::load(&d, &key, true);
        assert!(v.lost().is_none());
        let fw = Path::new("/etc/vigil/firmware.manifest");
        v.bind(fw, "firmware", "acme", "scanner").unwrap();
        v.accept("acme", "scanner", 7).unwrap();
        // Read back on the next start: the same versions and binding.
        let mut v = Versions::load(&d, &key, false);
        assert!(v.lost().is_none(), "{:?}", v.lost);
        assert_eq!(v.accept("acme", "scanner", 6), Err(7));
        assert!(v.bind(fw, "firmware", "acme", "scanner").is_ok());
        // Another validly signed manifest in its place is refused.
        assert_eq!(
            v.bind(fw, "model", "acme", "tumour-net"),
            Err("firmware manifest of acme, scope scanner".to_string())
        );
    }

    #[test]
    fn a_deleted_edited_or_foreign_record_is_lost_and_left_as_found() {
        let key = SigningKey::from_bytes(&[3; 32]);
        // Deleted after the first run.
        let d = dir("deleted");
        Versions::load(&d, &key, true)
            .accept("acme", "scanner", 7)
            .unwrap();
        std::fs::remove_file(d.join(VERSIONS_FILE)).unwrap();
        let v = Versions::load(&d, &key, false);
        assert_eq!(v.lost().unwrap().kind, FindingKind::Missing);
        // Deleted under a running agent: seen at the next pass.
        let d = dir("deleted-live");
        let mut v = Versions::load(&d, &key, true);
        v.accept("acme", "scanner", 7).unwrap();
        v.recheck();
        assert!(v.lost().is_none());
        std::fs::remove_file(d.join(VERSIONS_FILE)).unwrap();
        v.recheck();
        assert_eq!(v.lost().unwrap().kind, FindingKind::Missing);
        // Its version lowered by hand: the signature no longer verifies,
        // and the edited file is not rewritten by later accepts.
        let edited = dir("edited");
        let d = edited.clone();
        Versions::load(&d, &key, true)
            .accept("acme", "scanner", 7)
            .unwrap();
        let p = d.join(VERSIONS_FILE);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("v\t7\t", "v\t1\t");
        std::fs::write(&p, &text).unwrap();
        let mut v = Versions::load(&d, &key, false);
        assert_eq!(v.lost().unwrap().kind, FindingKind::BadSignature);
        v.accept("acme", "scanner", 3).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        // Signed by another device's key.
        let other = SigningKey::from_bytes(&[4; 32]);
        assert_eq!(
            Versions::load(&d, &other, false).lost().map(|f| f.kind),
            Some(FindingKind::BadSignature)
        );
        // A FIFO in its place: a finding, not a hang.
        let d = dir("fifo");
        nix::unistd::mkfifo(&d.join(VERSIONS_FILE), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(
            Versions::load(&d, &key, false).lost().map(|f| f.kind),
            Some(FindingKind::TypeChanged)
        );
        // The operator's reset: a fresh signed record, the old one kept.
        Versions::reset(&d, &key).unwrap();
        assert!(Versions::load(&d, &key, false).lost().is_none());
        let d = edited;
        Versions::reset(&d, &key).unwrap();
        assert!(d.join("manifest-versions.lost").exists());
        assert!(Versions::load(&d, &key, false).lost().is_none());
    }
}
