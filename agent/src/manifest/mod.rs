//! Manifests on the device and on the vendor's build host: build one from a
//! tree, check a tree against one, and (in `trust`) decide which signed
//! manifests are in force. Hashing runs on every core with bounded memory
//! (one read buffer per worker), whatever the size of the files.

pub mod tool;
pub mod trust;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use vigil_protocol::body::{Class, FileMeta, FindingKind};
use vigil_protocol::manifest::{Entry, EntryKind, Manifest};

/// Read size per hashing worker: large enough that syscalls do not show,
/// small enough that memory stays bounded (workers x this).
const BUF: usize = 1 << 20;

/// Hashing workers: the configured number, else one per core.
pub fn workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    // sysconf rather than `available_parallelism`, whose cgroup parsing
    // costs ~8 KB of binary for a figure the device does not need.
    match nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => usize::try_from(n).unwrap_or(1),
        _ => 1,
    }
}

/// `root` + a manifest path (`/usr/bin/x` -> `ROOT/usr/bin/x`).
pub fn under(root: &Path, path: &[u8]) -> PathBuf {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    if rel.is_empty() {
        return root.to_path_buf();
    }
    root.join(OsStr::from_bytes(rel))
}

/// SHA-256 and length of a regular file, read with `buf`. Opens without
/// following a symlink and refuses anything but a regular file (a FIFO
/// swapped in would otherwise block the pass).
pub fn hash_file(path: &Path, buf: &mut [u8]) -> Hashed {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let _ = nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(buf.get(..n).unwrap_or(&[]));
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(h.finish().as_ref()) {
        *o = *b;
    }
    Ok((out, len))
}

/// `Modified`'s `actual` hash when the file was not read because its size
/// already differs from the manifest's.
pub const NOT_HASHED: [u8; 32] = [0; 32];

/// A file's SHA-256 and length, or why it could not be read.
pub type Hashed = std::io::Result<([u8; 32], u64)>;

/// Hashes `files` on `threads` workers, largest first so one big model file
/// does not start last. Results are in the order of `files`.
pub fn hash_all(files: &[(PathBuf, u64)], threads: usize) -> Vec<std::io::Result<([u8; 32], u64)>> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files.get(i).map_or(0, |f| f.1)));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Hashed>>> = Mutex::new((0..files.len()).map(|_| None).collect());
    let threads = threads.clamp(1, files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { return };
                    let Some((path, _)) = files.get(i) else {
                        return;
                    };
                    let r = hash_file(path, &mut buf);
                    let mut all = results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = all.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("not hashed"))))
        .collect()
}

fn meta_of(m: &Metadata) -> FileMeta {
    FileMeta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }
}

/// Everything under `paths` (manifest-style, relative to `root`), not
/// following symlinks: path -> metadata. Special files (devices, FIFOs,
/// sockets) are left out and returned separately.
fn walk(
    root: &Path,
    paths: &[Vec<u8>],
    out: &mut BTreeMap<Vec<u8>, Metadata>,
    special: &mut Vec<Vec<u8>>,
) -> std::io::Result<()> {
    let mut stack: Vec<Vec<u8>> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let full = under(root, &p);
        let m = std::fs::symlink_metadata(&full)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", full.display())))?;
        let ft = m.file_type();
        if ft.is_dir() {
            let rd = std::fs::read_dir(&full)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", full.display())))?;
            for d in rd {
                let d = d?;
                let mut child = if p == b"/" { Vec::new() } else { p.clone() };
                child.push(b'/');
                child.extend_from_slice(d.file_name().as_bytes());
                stack.push(child);
            }
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            special.push(p);
            continue;
        }
        out.insert(p, m);
    }
    Ok(())
}

/// A manifest path from a command-line path: absolute, normalised.
pub fn manifest_path(p: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for c in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return None;
        }
        out.push(b'/');
        out.extend_from_slice(c.as_bytes());
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

pub struct BuildOptions {
    pub root: PathBuf,
    pub class: Class,
    pub version: u64,
    pub issuer: String,
    pub scope: String,
    pub model: String,
    pub created: i64,
    /// Manifest-style paths; `/` when empty.
    pub include: Vec<Vec<u8>>,
    pub exclusive: Vec<Vec<u8>>,
    pub threads: usize,
}

/// Records every file, directory and symlink under the included paths.
/// Returns the manifest and the special files that were left out.
pub fn build(o: &BuildOptions) -> anyhow::Result<(Manifest, Vec<Vec<u8>>)> {
    let include = if o.include.is_empty() {
        vec![b"/".to_vec()]
    } else {
        o.include.clone()
    };
    let mut found = BTreeMap::new();
    let mut special = Vec::new();
    walk(&o.root, &include, &mut found, &mut special)?;
    for x in &o.exclusive {
        if !found.get(x).is_some_and(Metadata::is_dir) {
            anyhow::bail!(
                "--exclusive {}: not a directory inside the included paths",
                String::from_utf8_lossy(x)
            );
        }
    }
    let files: Vec<(PathBuf, u64)> = found
        .iter()
        .filter(|(_, m)| m.is_file())
        .map(|(p, m)| (under(&o.root, p), m.size()))
        .collect();
    let mut hashes = hash_all(&files, o.threads).into_iter();
    let mut entries = Vec::with_capacity(found.len());
    for (path, m) in found {
        let kind = if m.is_file() {
            let (sha256, size) = hashes
                .next()
                .unwrap_or_else(|| Err(std::io::Error::other("?")))
                .map_err(|e| anyhow::anyhow!("{}: {e}", under(&o.root, &path).display()))?;
            EntryKind::File { size, sha256 }
        } else if m.is_dir() {
            EntryKind::Dir
        } else {
            let target = std::fs::read_link(under(&o.root, &path))?;
            EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        };
        let fm = meta_of(&m);
        entries.push(Entry {
            path,
            class: o.class,
            mode: fm.mode,
            uid: fm.uid,
            gid: fm.gid,
            kind,
        });
    }
    let mut exclusive = o.exclusive.clone();
    exclusive.sort();
    exclusive.dedup();
    let m = Manifest {
        issuer: o.issuer.clone(),
        scope: o.scope.clone(),
        model: o.model.clone(),
        version: o.version,
        created: o.created,
        exclusive,
        entries,
    };
    m.validate()
        .map_err(|e| anyhow::anyhow!("the manifest cannot be written: {e}"))?;
    Ok((m, special))
}

/// One difference between the tree and its manifest (full path; frames cut
/// it to `MAX_PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<u8>,
    pub kind: FindingKind,
}

/// Checks the tree under `root` against `m`: content, type, link target,
/// mode/owner/group, missing entries, and anything unlisted inside an
/// exclusive directory.
pub fn check(root: &Path, m: &Manifest, threads: usize) -> Vec<Found> {
    let mut out = Vec::new();
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    let mut file_entries: Vec<(&Entry, FileMeta)> = Vec::new();
    for e in &m.entries {
        let full = under(root, &e.path);
        let found = |kind| Found {
            path: e.path.clone(),
            kind,
        };
        let md = match std::fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                out.push(found(FindingKind::Missing));
                continue;
            }
            Err(_) => {
                out.push(found(FindingKind::Unreadable));
                continue;
            }
        };
        let ft = md.file_type();
        let expected = FileMeta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        };
        let actual = meta_of(&md);
        let same_type = match &e.kind {
            EntryKind::File { .. } => ft.is_file(),
            EntryKind::Dir => ft.is_dir(),
            EntryKind::Symlink { target } => {
                ft.is_symlink()
                    && std::fs::read_link(&full)
                        .is_ok_and(|t| t.as_os_str().as_bytes() == target.as_slice())
            }
        };
        if !same_type {
            out.push(found(FindingKind::TypeChanged));
            continue;
        }
        // A symlink's own mode is meaningless on Linux (always 0777).
        if actual != expected && !ft.is_symlink() {
            out.push(found(FindingKind::Metadata { expected, actual }));
        }
        if ft.is_file() {
            // Sizes first: a file of another size is modified without
            // reading it (a 4 GiB sparse file put in place of a model took
            // 15.6 s to hash). `actual` is then all zeros: not hashed.
            if let EntryKind::File { size, sha256 } = &e.kind {
                if md.size() != *size {
                    out.push(found(FindingKind::Modified {
                        expected: *sha256,
                        actual: NOT_HASHED,
                    }));
                    continue;
                }
            }
            files.push((full, md.size()));
            file_entries.push((e, actual));
        }
    }
    let hashes = hash_all(&files, threads);
    for ((e, _), h) in file_entries.iter().zip(hashes) {
        let EntryKind::File { size, sha256 } = &e.kind else {
            continue;
        };
        match h {
            Ok((actual, len)) if actual != *sha256 || len != *size => out.push(Found {
                path: e.path.clone(),
                kind: FindingKind::Modified {
                    expected: *sha256,
                    actual,
                },
            }),
            Ok(_) => {}
            Err(_) => out.push(Found {
                path: e.path.clone(),
                kind: FindingKind::Unreadable,
            }),
        }
    }
    if !m.exclusive.is_empty() {
        let listed: BTreeSet<&[u8]> = m.entries.iter().map(|e| e.path.as_slice()).collect();
        for dir in &m.exclusive {
            let mut seen = BTreeMap::new();
            let mut special = Vec::new();
            if walk(root, std::slice::from_ref(dir), &mut seen, &mut special).is_err() {
                continue; // the directory itself is an entry: reported above
            }
            for p in seen.keys().chain(special.iter()) {
                if !listed.contains(p.as_slice()) {
                    out.push(Found {
                        path: p.clone(),
                        kind: FindingKind::Unexpected,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    out
}

/// One line per finding, for people.
pub fn describe(f: &Found) -> String {
    let path = vigil_protocol::manifest::display_path(&f.path);
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let meta = |m: &FileMeta| format!("mode {:04o} uid {} gid {}", m.mode, m.uid, m.gid);
    match &f.kind {
        FindingKind::Modified { expected, actual } if *actual == NOT_HASHED => format!(
            "modified {path}: sha256 {} expected, another size found (not hashed)",
            hex(expected)
        ),
        FindingKind::Modified { expected, actual } => format!(
            "modified {path}: sha256 {} expected, {} found",
            hex(expected),
            hex(actual)
        ),
        FindingKind::Metadata { expected, actual } => format!(
            "metadata {path}: {} expected, {} found",
            meta(expected),
            meta(actual)
        ),
        FindingKind::Missing => format!("missing {path}"),
        FindingKind::Unexpected => {
            format!("unexpected {path}: not in the manifest of an exclusive directory")
        }
        FindingKind::TypeChanged => {
            format!("type-changed {path}: not the file type or link target listed")
        }
        FindingKind::Unreadable => format!("unreadable {path}"),
        FindingKind::BadSignature => {
            format!("bad-signature {path}: the manifest's signature does not verify")
        }
        FindingKind::UntrustedKey => {
            format!("untrusted-key {path}: signed by a key not in the trust directory")
        }
        FindingKind::Rollback { accepted, offered } => {
            format!("rollback {path}: version {offered} offered, {accepted} accepted before")
        }
        FindingKind::ScopeChanged => format!(
            "scope-changed {path}: signed, but of another class or scope than first accepted here"
        ),
    }
}

/// The finding's short name (`modified`, `missing`, ...).
pub fn kind_name(k: &FindingKind) -> &'static str {
    match k {
        FindingKind::Modified { .. } => "modified",
        FindingKind::Metadata { .. } => "metadata",
        FindingKind::Missing => "missing",
        FindingKind::Unexpected => "unexpected",
        FindingKind::TypeChanged => "type-changed",
        FindingKind::Unreadable => "unreadable",
        FindingKind::BadSignature => "bad-signature",
        FindingKind::UntrustedKey => "untrusted-key",
        FindingKind::Rollback { .. } => "rollback",
        FindingKind::ScopeChanged => "scope-changed",
    }
}
