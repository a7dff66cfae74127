//! Integrity and posture on the device: one pass (`vigil-agent check`, and
//! the agent at start), then, in the agent, a thread that repeats full
//! passes on a schedule and re-runs the configuration manifests and the
//! posture checks within a second or two of a watched file changing
//! (inotify on the directories that hold them).

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_protocol::body::{
    Body, CheckResult, Class, Finding, Integrity, ManifestVersion, Posture, MAX_CHECKS,
    MAX_FINDINGS, MAX_PATH,
};

use crate::config::Config;
use crate::manifest::trust::{self, Keys, Refused, Report, SelfCheck, Versions};
use crate::posture::{self, Check};
use crate::sample::fit;
use crate::sample::sockets;

/// What one pass found; `errors` are things that kept a check from running.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reports: Vec<Report>,
    pub posture: Vec<Check>,
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn has_findings(&self) -> bool {
        self.reports.iter().any(|r| !r.findings.is_empty())
            || self
                .posture
                .iter()
                .any(|c| c.status == vigil_protocol::body::CheckStatus::Fail)
    }
}

pub struct Guard {
    cfg: Config,
    versions: Versions,
    /// The agent's own binary and configuration, hashed on first use (in
    /// the guard thread, so the first `Hello` does not wait for it).
    self_check: Option<SelfCheck>,
    config_path: Option<PathBuf>,
    /// Accepted manifests: file, class, config-class entry paths.
    in_force: Vec<(PathBuf, ManifestVersion, Vec<PathBuf>)>,
    owners: sockets::Owners,
}

impl Guard {
    /// Loads the rollback record and opens every configured manifest once
    /// (signature and version only: cheap), so the first `Hello` names
    /// the manifests in force.
    pub fn new(cfg: &Config, config_path: Option<&Path>, persist: bool) -> Guard {
        // The record is signed by the device key; without one (`check` on
        // a machine where the agent never ran) it is kept in memory.
        let key = crate::identity::load(&cfg.state_dir).ok();
        let versions = match key.filter(|_| persist) {
            Some(key) => {
                let first_run = crate::identity::current_boot(&cfg.state_dir) <= 1;
                Versions::load(&cfg.state_dir, &key, first_run)
            }
            None => Versions::none(),
        };
        let mut g = Guard {
            cfg: cfg.clone(),
            versions,
            self_check: None,
            config_path: config_path.map(Path::to_path_buf),
            in_force: Vec::new(),
            owners: sockets::Owners::new(),
        };
        let _ = g.open_all();
        g
    }

    fn self_check(&mut self) -> &SelfCheck {
        let path = self.config_path.as_deref();
        self.self_check
            .get_or_insert_with(|| SelfCheck::start(path))
    }

    fn keys(&self) -> Result<Keys, String> {
        Keys::load(&self.cfg.integrity.trust_dir).map_err(|e| e.to_string())
    }

    /// Opens every manifest; the accepted ones become `in_force`.
    fn open_all(
        &mut self,
    ) -> (
        Vec<(PathBuf, vigil_protocol::manifest::Manifest)>,
        Vec<Report>,
        Vec<String>,
    ) {
        let (mut ok, mut refused, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        self.versions.recheck();
        if self.cfg.integrity.manifests.is_empty() {
            return (ok, refused, errors);
        }
        let keys = match self.keys() {
            Ok(k) => k,
            Err(e) => {
                // No manifest can be trusted: each is reported refused,
                // naming the trust directory, so the collector sees it.
                let dir = &self.cfg.integrity.trust_dir;
                for p in &self.cfg.integrity.manifests {
                    refused.push(Report {
                        source: p.clone(),
                        manifest: vigil_protocol::body::ManifestVersion {
                            class: Class::Config,
                            issuer: crate::sample::fit("unknown"),
                            scope: crate::sample::fit(&p.display().to_string()),
                            version: 0,
                        },
                        checked: 0,
                        findings: vec![crate::manifest::Found {
                            path: std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec(),
                            kind: vigil_protocol::body::FindingKind::UntrustedKey,
                        }],
                    });
                }
                errors.push(e);
                return (ok, refused, errors);
            }
        };
        for p in &self.cfg.integrity.manifests {
            match trust::open(p, &keys, &mut self.versions) {
                Ok(m) => ok.push((p.clone(), m)),
                Err(Refused::Finding(r)) => refused.push(*r),
                Err(Refused::Unusable(e)) => errors.push(e),
            }
        }
        self.in_force = ok
            .iter()
            .map(|(p, m)| {
                let config_files = m
                    .entries
                    .iter()
                    .filter(|e| e.class == Class::Config)
                    .map(|e| crate::manifest::under(&self.cfg.root, &e.path))
                    .collect();
                (p.clone(), trust::version_of(m), config_files)
            })
            .collect();
        (ok, refused, errors)
    }

    /// The manifests in force, for `Hello`.
    pub fn in_force(&self) -> Vec<ManifestVersion> {
        self.in_force.iter().map(|(_, v, _)| v.clone()).collect()
    }

    /// Integrity: every manifest (or only configuration ones) and the
    /// agent's own files.
    pub fn integrity(&mut self, only_config: bool, out: &mut Outcome) {
        let (ok, refused, errors) = self.open_all();
        out.reports.extend(refused);
        out.errors.extend(errors);
        let threads = crate::manifest::workers(self.cfg.integrity.threads);
        let lost = self.versions.lost();
        for (path, m) in ok {
            if only_config && trust::class_of(&m) != Class::Config {
                continue;
            }
            let mut findings = crate::manifest::check(&self.cfg.root, &m, threads);
            // Rollback protection is off while the record is lost: no
            // manifest report is clean until an operator acts.
            findings.extend(lost.clone());
            out.reports.push(Report {
                findings,
                checked: u32::try_from(m.entries.len()).unwrap_or(u32::MAX),
                manifest: trust::version_of(&m),
                source: path,
            });
        }
        out.reports.push(self.self_check().check());
    }

    pub fn posture(&mut self, out: &mut Outcome) {
        let mut issues = Vec::new();
        let table = sockets::read(&self.cfg.root, &mut self.owners, &mut issues);
        for i in issues {
            log::debug!("posture: sockets: {i}");
        }
        out.posture = posture::run(&self.cfg.root, &self.cfg.posture, &table);
    }

    /// Directories to watch: those holding configuration-class files of the
    /// manifests in force, the SSH configuration and the agent's own files.
    fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .in_force
            .iter()
            .flat_map(|(p, _, cf)| cf.iter().cloned().chain([p.clone()]))
            .collect();
        files.extend(posture::watched_files(&self.cfg.root));
        if let Some(sc) = &self.self_check {
            files.extend(sc.paths().map(Path::to_path_buf));
        }
        files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|d| d.is_dir())
            .collect()
    }
}

/// One full pass (for `vigil-agent check`).
pub fn once(cfg: &Config, config_path: Option<&Path>) -> Outcome {
    let mut g = Guard::new(cfg, config_path, cfg.state_dir.is_dir());
    let mut out = Outcome::default();
    g.integrity(false, &mut out);
    g.posture(&mut out);
    out
}

fn cut_path(p: &[u8]) -> heapless::Vec<u8, MAX_PATH> {
    heapless::Vec::from_slice(p.get(..p.len().min(MAX_PATH)).unwrap_or(&[])).unwrap_or_default()
}

/// Body bytes a frame may carry: `MAX_FRAME_LEN` (4,096) less the header,
/// the signature, COBS overhead and a margin.
const BODY_BUDGET: usize = 3_200;

/// Splits `items` into runs of at most `max` whose estimated encoded size
/// stays within `BODY_BUDGET`; always at least one (possibly empty) run.
fn runs<T>(items: &[T], max: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, it) in items.iter().enumerate() {
        let n = size(it);
        if i > start && (i - start >= max || bytes + n > BODY_BUDGET) {
            out.push(items.get(start..i).unwrap_or(&[]));
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    out.push(items.get(start..).unwrap_or(&[]));
    out
}

/// The outcome as frame bodies: per manifest one or more `Integrity`
/// frames (one even when clean: it proves the pass ran), then `Posture`.
/// Findings and results are split so every frame fits `MAX_FRAME_LEN`.
pub fn bodies(out: &Outcome) -> Vec<Body> {
    let mut v = Vec::new();
    for r in &out.reports {
        // Path (cut), two hashes at most, tags and varints.
        let chunks = runs(&r.findings, MAX_FINDINGS, |f| {
            f.path.len().min(MAX_PATH) + 80
        });
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            v.push(Body::Integrity(Integrity {
                manifest: r.manifest.clone(),
                checked: r.checked,
                continued: i + 1 < n,
                findings: c
                    .iter()
                    .map(|f| Finding {
                        kind: f.kind.clone(),
                        path: cut_path(&f.path),
                    })
                    .collect(),
            }));
        }
    }
    if !out.posture.is_empty() {
        let chunks = runs(&out.posture, MAX_CHECKS, |c| {
            c.id.len().min(32) + c.title.len().min(64) + c.evidence.len().min(160) + 8
        });
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            v.push(Body::Posture(Posture {
                continued: i + 1 < n,
                results: c
                    .iter()
                    .map(|c| CheckResult {
                        id: fit(c.id),
                        title: fit(&c.title),
                        status: c.status,
                        evidence: fit(&c.evidence),
                    })
                    .collect(),
            }));
        }
    }
    v
}

/// Runs until `stop()` is true: a full pass now and every
/// `integrity.interval_s`, posture every `posture.interval_s`, and both
/// (configuration manifests only) when a watched directory changes.
pub fn run(mut g: Guard, emit: impl Fn(Vec<Body>), stop: impl Fn() -> bool) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => Some(i),
        Err(e) => {
            log::warn!("inotify unavailable ({e}): configuration changes wait for the next pass");
            None
        }
    };
    let mask = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB;
    let mut watched = BTreeSet::new();
    let rewatch = |g: &Guard, watched: &mut BTreeSet<PathBuf>| {
        let Some(ino) = &inotify else { return };
        for d in g.watched_dirs() {
            if !watched.contains(&d) {
                match ino.add_watch(&d, mask) {
                    Ok(_) => {
                        watched.insert(d);
                    }
                    Err(e) => log::warn!("cannot watch {}: {e}", d.display()),
                }
            }
        }
    };
    let full = Duration::from_secs(g.cfg.integrity.interval_s);
    let posture_every = Duration::from_secs(g.cfg.posture.interval_s);
    let mut next_full = Instant::now();
    let mut next_posture = Instant::now();
    let mut dirty: Option<Instant> = None;
    while !stop() {
        let now = Instant::now();
        let mut out = Outcome::default();
        let mut ran = false;
        let mut kind = "posture";
        if now >= next_full {
            g.integrity(false, &mut out);
            next_full = Instant::now() + full;
            (ran, kind) = (true, "full");
        } else if dirty.is_some_and(|t| now >= t) {
            g.integrity(true, &mut out);
            (ran, kind) = (true, "change");
        }
        if ran || now >= next_posture || dirty.is_some_and(|t| now >= t) {
            g.posture(&mut out);
            next_posture = Instant::now() + posture_every;
            ran = true;
        }
        if ran {
            dirty = None;
            for e in &out.errors {
                log::error!("integrity: {e}");
            }
            let n: usize = out.reports.iter().map(|r| r.findings.len()).sum();
            if n > 0 {
                log::warn!("integrity: {n} findings");
            }
            log::debug!(
                "guard: {kind} pass in {} ms: {} manifest reports, {n} findings, {} posture checks",
                now.elapsed().as_millis(),
                out.reports.len(),
                out.posture.len()
            );
            emit(bodies(&out));
            rewatch(&g, &mut watched);
        }
        // Sleep until the next deadline or a watched change: no periodic
        // wake-ups (the agent's CPU budget is 0.1 % of a core). `stop` is
        // looked at between passes; at exit the process simply ends.
        let deadline = [Some(next_full), Some(next_posture), dirty]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_full);
        let wait = deadline.saturating_duration_since(Instant::now());
        match &inotify {
            Some(ino) => {
                let mut fds = [nix::poll::PollFd::new(
                    ino.as_raw_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
                if matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) {
                    if let Ok(events) = ino.read_events() {
                        if !events.is_empty() && dirty.is_none() {
                            // Let an editor finish writing and renaming.
                            dirty = Some(Instant::now() + Duration::from_millis(200));
                        }
                    }
                }
            }
            None => std::thread::sleep(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protocol::body::{CheckStatus, FindingKind};
    use vigil_protocol::{DeviceId, Frame, Header, SigningKey, VERSION};

    /// Worst cases: 24 findings with 256-byte paths and two hashes, 25
    /// checks with full-length evidence. Every frame must sign (fit).
    #[test]
    fn the_largest_outcomes_split_into_frames_that_fit() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let findings = (0..100u8)
            .map(|i| crate::manifest::Found {
                path: vec![b'a' + i % 26; 300],
                kind: FindingKind::Modified {
                    expected: [i; 32],
                    actual: [!i; 32],
                },
            })
            .collect();
        let checks = (0..25)
            .map(|_| Check {
                id: "ssh.kbd-interactive",
                title: "t".repeat(80),
                status: CheckStatus::Fail,
                evidence: "e".repeat(200),
            })
            .collect();
        let out = Outcome {
            reports: vec![Report {
                source: "x".into(),
                manifest: trust::self_version(),
                checked: 100,
                findings,
            }],
            posture: checks,
            errors: vec![],
        };
        let (mut findings, mut results) = (0, 0);
        for (seq, b) in bodies(&out).into_iter().enumerate() {
            match &b {
                Body::Integrity(i) => findings += i.findings.len(),
                Body::Posture(p) => results += p.results.len(),
                _ => {}
            }
            let header = Header {
                version: VERSION,
                device: DeviceId::of(&key.verifying_key()),
                boot: 1,
                seq: seq as u64,
                time_ms: 0,
            };
            Frame::new(header, b).sign(&key).expect("frame fits");
        }
        assert_eq!((findings, results), (100, 25));
    }
}
