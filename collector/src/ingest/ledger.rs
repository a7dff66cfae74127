//! The ack ledger: what the collector has acknowledged, per device, kept
//! beside the archive rather than in it (`vigil.acks` in the state dir).
//!
//! SQLite in WAL mode with `synchronous = FULL` makes a commit durable
//! against a crash or power loss, but a WAL damaged after the commit (a bad
//! sector, a stray write) is cut off by SQLite's recovery at the first bad
//! frame without a word: everything committed after it is gone, and with it
//! frames the agents were told were safe and have dropped. The writer
//! records each device's ack here after its transaction commits and before
//! the ack is sent; at start it compares the ledger with the archive, and an
//! ack the archive no longer backs is archive loss (`collector.archive-loss`),
//! named once, never blamed on the transport.
//!
//! The file is fixed slots of 32 bytes: a header at offset 0 naming the
//! archive it belongs to (`meta.archive_id`), then device `num`'s slot at
//! `num * 32`: magic, device id, boot, acked sequence and a CRC. A slot is
//! one `pwrite` in the page cache (no fsync): it survives the collector's
//! death, not the machine's, so after an OS crash the ledger may be behind
//! the archive (no alert, nothing false) but never ahead of what was acked.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use vigil_protocol::frame::crc32;
use vigil_protocol::DeviceId;

const SLOT: u64 = 32;
const HEADER_MAGIC: &[u8; 8] = b"VIGILACK";
const SLOT_MAGIC: &[u8; 4] = b"VAK1";
/// Device numbers beyond this get no slot (a 32 MiB ledger).
pub const MAX_NUM: i64 = 1 << 20;

/// What one slot says was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub num: i64,
    pub device: DeviceId,
    pub boot: u32,
    pub seq: u64,
}

pub struct Ledger {
    file: File,
}

/// What `open` found.
pub struct Opened {
    pub ledger: Ledger,
    /// Every valid slot, by device number.
    pub acked: Vec<Acked>,
    /// The ledger was new, or belonged to another archive (moved aside).
    pub fresh: bool,
    /// Slots that did not check out (torn or overwritten): reported, skipped.
    pub bad_slots: Vec<i64>,
}

fn header(archive_id: &[u8; 16]) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(HEADER_MAGIC);
    h[8..24].copy_from_slice(archive_id);
    let crc = crc32(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn slot(a: &Acked) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(SLOT_MAGIC);
    s[4..12].copy_from_slice(&a.device.0);
    s[12..16].copy_from_slice(&a.boot.to_le_bytes());
    s[16..24].copy_from_slice(&a.seq.to_le_bytes());
    let crc = crc32(&s[..24]);
    s[24..28].copy_from_slice(&crc.to_le_bytes());
    s
}

/// A slot's contents, `None` for an empty one, `Err` for one that does not
/// check out.
fn parse(num: i64, s: &[u8]) -> Result<Option<Acked>, ()> {
    if s.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let field = |a: usize, b: usize| s.get(a..b).ok_or(());
    let crc = u32::from_le_bytes(field(24, 28)?.try_into().map_err(|_| ())?);
    if field(0, 4)? != SLOT_MAGIC || crc32(field(0, 24)?) != crc {
        return Err(());
    }
    Ok(Some(Acked {
        num,
        device: DeviceId(field(4, 12)?.try_into().map_err(|_| ())?),
        boot: u32::from_le_bytes(field(12, 16)?.try_into().map_err(|_| ())?),
        seq: u64::from_le_bytes(field(16, 24)?.try_into().map_err(|_| ())?),
    }))
}

impl Ledger {
    /// Opens (creating, 0600) the ledger at `path` for the archive whose
    /// `meta.archive_id` is `archive_id`. A ledger of another archive (a new
    /// one was started, `--new`) is moved aside and a new one begun.
    pub fn open(path: &Path, archive_id: &[u8; 16]) -> std::io::Result<Opened> {
        let ctx =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open(path)
                .map_err(ctx)
        };
        let mut file = open()?;
        let meta = file.metadata().map_err(ctx)?;
        if !meta.is_file() {
            return Err(ctx(std::io::Error::other("not a regular file")));
        }
        if meta.len() > (MAX_NUM as u64 + 1) * SLOT {
            return Err(ctx(std::io::Error::other(format!(
                "{} bytes: larger than any ack ledger",
                meta.len()
            ))));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(ctx)?;
        let want = header(archive_id);
        let mut fresh = bytes.is_empty();
        if !fresh && bytes.get(..32) != Some(want.as_slice()) {
            let mut aside = path.as_os_str().to_os_string();
            aside.push(format!(".other-{}", crate::clock::now_ms()));
            log::warn!(
                "ack ledger {} belongs to another archive (or is damaged): moved aside to {}; starting a new one",
                path.display(),
                Path::new(&aside).display()
            );
            std::fs::rename(path, &aside).map_err(ctx)?;
            file = open()?;
            bytes.clear();
            fresh = true;
        }
        if fresh {
            file.write_all_at(&want, 0).map_err(ctx)?;
        }
        let (mut acked, mut bad_slots) = (Vec::new(), Vec::new());
        for (i, s) in bytes.chunks(SLOT as usize).enumerate().skip(1) {
            let num = i64::try_from(i).unwrap_or(i64::MAX);
            match parse(num, s) {
                Ok(Some(a)) => acked.push(a),
                Ok(None) => {}
                Err(()) => bad_slots.push(num),
            }
        }
        Ok(Opened {
            ledger: Ledger { file },
            acked,
            fresh,
            bad_slots,
        })
    }

    /// Records that everything of `a.boot` up to `a.seq` is acknowledged.
    pub fn record(&self, a: &Acked) -> std::io::Result<()> {
        if !(1..=MAX_NUM).contains(&a.num) {
            return Ok(());
        }
        let at = u64::try_from(a.num).unwrap_or(0) * SLOT;
        self.file.write_all_at(&slot(a), at)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slots_survive_a_reopen_and_a_damaged_one_is_named() {
        let dir = std::env::temp_dir().join(format!("vigil-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.acks");
        let _ = std::fs::remove_file(&path);
        let id = [7u8; 16];
        let o = Ledger::open(&path, &id).unwrap();
        assert!(o.fresh && o.acked.is_empty());
        let a = Acked {
            num: 3,
            device: DeviceId([1; 8]),
            boot: 2,
            seq: 41,
        };
        let b = Acked {
            num: 1,
            device: DeviceId([2; 8]),
            boot: 0,
            seq: u64::MAX - 1,
        };
        o.ledger.record(&a).unwrap();
        o.ledger.record(&b).unwrap();
        o.ledger.record(&Acked { seq: 42, ..a }).unwrap();
        drop(o);
        let o = Ledger::open(&path, &id).unwrap();
        assert!(!o.fresh);
        assert_eq!(o.acked, vec![b, Acked { seq: 42, ..a }]);
        assert!(o.bad_slots.is_empty());
        drop(o);
        // One byte of slot 3 changed: that slot is named, the others stand.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 3 * SLOT + 17).unwrap();
        let o = Ledger::open(&path, &id).unwrap();
        assert_eq!(o.acked, vec![b]);
        assert_eq!(o.bad_slots, vec![3]);
        drop(o);
        // Another archive's ledger is moved aside, not believed.
        let o = Ledger::open(&path, &[8u8; 16]).unwrap();
        assert!(o.fresh && o.acked.is_empty());
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".other-")
            })
            .count();
        assert_eq!(aside, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
