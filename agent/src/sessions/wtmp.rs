//! Follows an append-only login log (`wtmp`): hands out the records added
//! since the last read and notices when records already read vanish or
//! change. The bytes read so far are remembered by length and SHA-256;
//! they are hashed again only when the file's size, inode or change time
//! moved, so a quiet log costs one `stat` per read. A rotation that keeps
//! the old records as `FILE.1` (logrotate's `create`) is not tampering.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vigil_protocol::body::TamperKind;

use super::utmp::{self, Layout, Record};

/// Most new bytes taken in one read (the rest waits for the next).
const MAX_READ: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    pub kind: TamperKind,
    pub expected_len: u64,
    pub actual_len: u64,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Polled {
    pub records: Vec<Record>,
    pub tamper: Option<Tamper>,
    /// Records that did not decode.
    pub bad: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    ctime: (i64, i64),
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        ino: m.ino(),
        len: m.len(),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

pub struct Follower {
    path: PathBuf,
    layout: Option<Layout>,
    /// Bytes already read (whole records only) and their hash.
    read: u64,
    hash: Sha256,
    /// The file as it was when `read`/`hash` were last confirmed.
    seen: Option<Stamp>,
    /// The file followed, held open: its inode cannot be reused by a file
    /// put in its place, so a replacement always shows.
    held: Option<File>,
}

fn hash_prefix(f: &mut File, len: u64) -> std::io::Result<Sha256> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = [0u8; 8192];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(buf.get_mut(..want).unwrap_or(&mut []))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
        left -= n as u64;
    }
    Ok(h)
}

impl Follower {
    /// Starts at the end of the log: what it held before the agent started
    /// is history, not news.
    pub fn at_end(path: &Path) -> Follower {
        let mut f = Follower {
            path: path.to_path_buf(),
            layout: None,
            read: 0,
            hash: Sha256::new(),
            seen: None,
            held: File::open(path).ok(),
        };
        f.skip_to_end();
        f
    }

    /// Takes in everything the file holds now without reporting it.
    fn skip_to_end(&mut self) {
        let Ok(mut file) = File::open(&self.path) else {
            return;
        };
        loop {
            let before = self.read;
            if self.take_new(&mut file, true).is_err() || self.read == before {
                return;
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts over on the file as it is now, without reporting its records.
    fn rebase(&mut self) {
        self.read = 0;
        self.hash = Sha256::new();
        self.seen = None;
        self.skip_to_end();
    }

    /// Reads whole records past `self.read`, extending the hash.
    fn take_new(&mut self, file: &mut File, skip: bool) -> std::io::Result<(Vec<Record>, usize)> {
        let meta = file.metadata()?;
        let len = meta.len();
        let mut out = Vec::new();
        let mut bad = 0;
        if len > self.read {
            file.seek(SeekFrom::Start(self.read))?;
            let mut buf = Vec::new();
            file.take((len - self.read).min(MAX_READ))
                .read_to_end(&mut buf)?;
            let layout = *self.layout.get_or_insert_with(|| utmp::detect(&buf));
            let whole = buf.len() - buf.len() % layout.size();
            let chunk = buf.get(..whole).unwrap_or(&[]);
            if !skip {
                let (r, b, _) = utmp::parse(chunk, layout);
                out = r;
                bad = b;
            }
            self.hash.update(chunk);
            self.read += whole as u64;
        }
        // The file's whole length: a partial record completing later
        // changes it, and that triggers the next read.
        self.seen = Some(stamp(&meta));
        Ok((out, bad))
    }

    /// The records appended since the last call, and tampering if the
    /// records read before are no longer there as they were.
    pub fn poll(&mut self) -> Polled {
        let mut out = Polled::default();
        let meta = std::fs::metadata(&self.path).ok();
        let now = meta.as_ref().map(stamp);
        if now == self.seen {
            return out;
        }
        let actual_len = now.map_or(0, |s| s.len);
        let moved = match (&self.held, now) {
            (Some(h), Some(b)) => h.metadata().map_or(true, |m| m.ino() != b.ino),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if moved {
            match self.rotated() {
                Some(tail) => out.records = tail,
                None if self.read > 0 => {
                    out.tamper = Some(Tamper {
                        kind: TamperKind::Replaced,
                        expected_len: self.read,
                        actual_len,
                    });
                }
                None => {}
            }
            // A new file (rotation or not): its records are new.
            self.held = File::open(&self.path).ok();
            self.read = 0;
            self.hash = Sha256::new();
            self.seen = None;
        }
        let Ok(mut file) = File::open(&self.path) else {
            self.seen = now;
            return out;
        };
        if self.held.is_none() {
            self.held = file.try_clone().ok(); // the log appeared
        }
        if out.tamper.is_none() && actual_len < self.read {
            out.tamper = Some(Tamper {
                kind: TamperKind::Truncated,
                expected_len: self.read,
                actual_len,
            });
            self.rebase();
            return out;
        }
        if self.read > 0 {
            match hash_prefix(&mut file, self.read) {
                Ok(h) if h.clone().finalize() == self.hash.clone().finalize() => {}
                Ok(_) => {
                    out.tamper = Some(Tamper {
                        kind: TamperKind::Rewritten,
                        expected_len: self.read,
                        actual_len,
                    });
                    self.rebase();
                    return out;
                }
                Err(_) => return out,
            }
        }
        if let Ok((records, bad)) = self.take_new(&mut file, false) {
            out.records.extend(records);
            out.bad = bad;
        }
        out
    }

    /// When the file that was followed is now `FILE.1` with the records
    /// read so far still at its start: the records added to it after them.
    fn rotated(&mut self) -> Option<Vec<Record>> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let mut f = File::open(PathBuf::from(old)).ok()?;
        let m = f.metadata().ok()?;
        let held = self.held.as_ref()?.metadata().ok()?;
        if m.ino() != held.ino() {
            return None;
        }
        let h = hash_prefix(&mut f, self.read).ok()?;
        if h.finalize() != self.hash.clone().finalize() {
            return None;
        }
        self.take_new(&mut f, false).ok().map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::utmp::{encode, USER_PROCESS};
    use std::io::Write;

    fn rec(pid: u32) -> Vec<u8> {
        encode(
            &Record {
                kind: USER_PROCESS,
                pid,
                line: "pts/0".into(),
                user: "vendor".into(),
                host: String::new(),
                time_s: 1_800_000_000 + u64::from(pid),
                addr: None,
            },
            Layout::Time32,
        )
    }

    fn append(p: &Path, b: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .unwrap();
        f.write_all(b).unwrap();
    }

    #[test]
    fn new_records_then_truncation_then_rewrite_then_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wtmp");
        append(&p, &rec(1));
        let mut f = Follower::at_end(&p);
        assert!(f.poll().records.is_empty(), "history is not news");
        append(&p, &rec(2));
        append(&p, rec(3).get(..100).unwrap()); // half written
        let r = f.poll();
        assert_eq!(r.records.iter().map(|r| r.pid).collect::<Vec<_>>(), [2]);
        assert!(r.tamper.is_none());
        append(&p, rec(3).get(100..).unwrap());
        assert_eq!(
            f.poll().records.iter().map(|r| r.pid).collect::<Vec<_>>(),
            [3]
        );
        assert!(f.poll().records.is_empty());

        // A record removed from the middle: the log is shorter than read.
        let all = std::fs::read(&p).unwrap();
        let mut cut = all.get(..384).unwrap().to_vec();
        cut.extend(all.get(768..).unwrap());
        std::fs::write(&p, &cut).unwrap();
        let t = f.poll().tamper.unwrap();
        assert_eq!(t.kind, TamperKind::Truncated);
        assert_eq!((t.expected_len, t.actual_len), (3 * 384, 2 * 384));
        assert!(f.poll().tamper.is_none(), "reported once");

        // Same length, one record's user changed in place.
        let mut b = std::fs::read(&p).unwrap();
        *b.get_mut(44).unwrap() = b'X';
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all(&b)
            .unwrap();
        assert_eq!(f.poll().tamper.unwrap().kind, TamperKind::Rewritten);

        // Replaced by another file: reported; its records are taken.
        std::fs::remove_file(&p).unwrap();
        append(&p, &rec(9));
        let r = f.poll();
        assert_eq!(r.tamper.unwrap().kind, TamperKind::Replaced);
        assert_eq!(r.records.iter().map(|r| r.pid).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_rotation_that_keeps_the_records_is_not_tampering() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wtmp");
        append(&p, &rec(1));
        let mut f = Follower::at_end(&p);
        append(&p, &rec(2)); // just before the rotation
        std::fs::rename(&p, d.path().join("wtmp.1")).unwrap();
        append(&p, &rec(5));
        let r = f.poll();
        assert!(r.tamper.is_none(), "{:?}", r.tamper);
        assert_eq!(r.records.iter().map(|r| r.pid).collect::<Vec<_>>(), [2, 5]);
        // Removed outright: tampering.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(f.poll().tamper.unwrap().kind, TamperKind::Replaced);
    }

    #[test]
    fn a_long_history_is_not_news() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wtmp");
        let many: Vec<u8> = (0..3000).flat_map(rec).collect(); // 1.1 MiB, more than one read
        append(&p, &many);
        let mut f = Follower::at_end(&p);
        assert!(f.poll().records.is_empty());
        append(&p, &rec(7));
        assert_eq!(f.poll().records.len(), 1);
    }

    #[test]
    fn a_missing_log_is_quietly_empty() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Follower::at_end(&d.path().join("none"));
        let r = f.poll();
        assert!(r.records.is_empty() && r.tamper.is_none());
    }
}
