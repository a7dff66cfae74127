//! The archive: one SQLite file (WAL, synchronous=FULL) holding devices,
//! the signed frames exactly as received, the rows decoded from them,
//! alerts, the event outbox for the sinks, and the admin log. Only this
//! module knows SQL. It stores only `VerifiedFrame`s; `audit` re-verifies
//! every stored frame and the rows decoded from it. Here: the schema, the
//! connection and its checkpoints; by table: `devices`, `frames` (frames,
//! decoded rows, export, roll-up), `baselines`, `alerts` (alerts, the
//! outbox, the admin log), `audit`, `access` (the access record), and
//! `registry`, the device keys in memory, and `chain`, the hash chain
//! and signed checkpoints. Within it, `devices` uses
//! `baselines` and `alerts`, `baselines` uses `alerts`, `audit` uses
//! `frames`. Depends only on `alert` (the alert record) and the protocol.

pub mod access;
mod alerts;
mod audit;
mod baselines;
pub mod chain;
mod devices;
mod frames;
pub mod registry;

pub use alerts::{admin, raise, resolve_rule, resolve_rule_emitted};
pub use baselines::{baseline_row, ensure_baseline, save_baseline, BaselineRow};
pub use devices::{
    address_of, device_num, device_state, drop_pending, hello_json, insert_pending, pending_from,
    silent_devices, update_device,
};
pub use frames::{store_frame, stored_of, Layout};

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{json, Value};
use vigil_protocol::body::Hello;
use vigil_protocol::{Body, DeviceId, SignedFrame, VerifiedFrame, VerifyingKey};

use crate::alert::{Alert, Raise};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("archive {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("archive: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no device matches `{0}` (give its 16-hex-digit id or its name)")]
    NoDevice(String),
    #[error("`{0}` matches more than one device; give the full id")]
    Ambiguous(String),
    #[error("no alert {0}")]
    NoAlert(i64),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An open write transaction (or the read connection), as the modules that
/// record through the store's functions hold it. SQLite's today; a second
/// backend makes this the store's own type.
pub type Tx = Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Pending,
    Approved,
    Revoked,
}

impl DeviceState {
    pub fn name(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Approved => "approved",
            DeviceState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> DeviceState {
        match s {
            "approved" => DeviceState::Approved,
            "revoked" => DeviceState::Revoked,
            _ => DeviceState::Pending,
        }
    }
}

/// A device as the archive knows it.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    /// Small integer naming the device inside the archive.
    pub num: i64,
    pub public_key: String,
    pub name: String,
    pub model: String,
    pub state: DeviceState,
    pub created_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub frames_received: u64,
    pub track: Option<Track>,
    pub hello: Option<Value>,
    pub open_alerts: u64,
    /// Where its last `Hello` came from (`ADDR:PORT`, or a serial port).
    pub peer: Option<String>,
}

/// Where a device's sequence space stands, persisted with every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Track {
    pub boot: u32,
    /// Highest sequence seen in `boot`.
    pub high: u64,
    /// Every frame of `boot` up to here is stored or explained by a `Gap`.
    pub acked: Option<u64>,
    /// Stored or explained ranges above `acked + 1` (start -> end exclusive).
    pub above: BTreeMap<u64, u64>,
    /// When a hole (a missing sequence below `high`) was first seen, ms.
    pub hole_since_ms: Option<u64>,
}

impl Track {
    fn encode_above(&self) -> String {
        self.above
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn decode_above(s: &str) -> BTreeMap<u64, u64> {
        s.split(',')
            .filter_map(|r| {
                let (a, b) = r.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect()
    }
}

pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// Decoded rows are keyed by their frame's rowid, which only grows, so
// ingest appends to them; the one index that takes an insertion point per
// device is `frames_key`, the exactly-once guard, kept small by naming the
// device by its number (`devices.num`) rather than its hex id. The per-batch device state
// lives in the small `tracks` table.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices(
  id TEXT PRIMARY KEY,
  num INTEGER NOT NULL UNIQUE,
  public_key TEXT NOT NULL,
  name TEXT NOT NULL DEFAULT '',
  model TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL CHECK(state IN ('pending','approved','revoked')),
  created_ms INTEGER NOT NULL,
  hello TEXT, peer TEXT);
CREATE TABLE IF NOT EXISTS tracks(
  device TEXT PRIMARY KEY,
  last_seen_ms INTEGER NOT NULL, frames_received INTEGER NOT NULL,
  boot INTEGER NOT NULL, high_seq INTEGER NOT NULL, acked_seq INTEGER,
  above TEXT NOT NULL, hole_since_ms INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames(
  id INTEGER PRIMARY KEY,
  device INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
  bytes BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS frames_key ON frames(device, boot, seq);
CREATE TABLE IF NOT EXISTS samples(
  frame INTEGER NOT NULL, idx INTEGER NOT NULL,
  time_ms INTEGER NOT NULL, interval_ms INTEGER NOT NULL, uptime_s INTEGER NOT NULL,
  cpu_user INTEGER NOT NULL, cpu_nice INTEGER NOT NULL, cpu_system INTEGER NOT NULL,
  cpu_idle INTEGER NOT NULL, cpu_iowait INTEGER NOT NULL, cpu_irq INTEGER NOT NULL,
  cpu_softirq INTEGER NOT NULL, cpu_steal INTEGER NOT NULL,
  mem_total_kib INTEGER NOT NULL, mem_available_kib INTEGER NOT NULL,
  swap_total_kib INTEGER NOT NULL, swap_used_kib INTEGER NOT NULL,
  psi_cpu_some_ms INTEGER, psi_memory_some_ms INTEGER, psi_memory_full_ms INTEGER,
  psi_io_some_ms INTEGER, psi_io_full_ms INTEGER,
  load1_centi INTEGER NOT NULL, load5_centi INTEGER NOT NULL, load15_centi INTEGER NOT NULL,
  processes INTEGER NOT NULL,
  PRIMARY KEY(frame, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample_net(
  frame INTEGER NOT NULL, idx INTEGER NOT NULL, iface TEXT NOT NULL,
  rx_bytes INTEGER NOT NULL, rx_packets INTEGER NOT NULL, rx_errors INTEGER NOT NULL, rx_dropped INTEGER NOT NULL,
  tx_bytes INTEGER NOT NULL, tx_packets INTEGER NOT NULL, tx_errors INTEGER NOT NULL, tx_dropped INTEGER NOT NULL,
  PRIMARY KEY(frame, idx, iface)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample_disk(
  frame INTEGER NOT NULL, idx INTEGER NOT NULL, disk TEXT NOT NULL,
  reads INTEGER NOT NULL, read_sectors INTEGER NOT NULL,
  writes INTEGER NOT NULL, write_sectors INTEGER NOT NULL, io_ms INTEGER NOT NULL,
  PRIMARY KEY(frame, idx, disk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples_minute(
  device TEXT NOT NULL, minute_ms INTEGER NOT NULL, samples INTEGER NOT NULL,
  cpu_busy INTEGER NOT NULL, cpu_total INTEGER NOT NULL,
  mem_available_kib_min INTEGER NOT NULL, mem_available_kib_avg INTEGER NOT NULL,
  swap_used_kib_max INTEGER NOT NULL, processes_max INTEGER NOT NULL, load1_centi_max INTEGER NOT NULL,
  rx_bytes INTEGER NOT NULL, tx_bytes INTEGER NOT NULL,
  PRIMARY KEY(device, minute_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS socket_changes(
  frame INTEGER NOT NULL, idx INTEGER NOT NULL,
  time_ms INTEGER NOT NULL, snapshot INTEGER NOT NULL, change TEXT NOT NULL, kind TEXT NOT NULL,
  proto TEXT NOT NULL, local TEXT NOT NULL, remote TEXT, uid INTEGER NOT NULL, process TEXT NOT NULL,
  PRIMARY KEY(frame, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts(
  id INTEGER PRIMARY KEY,
  device TEXT NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL, dedup TEXT NOT NULL,
  first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, count INTEGER NOT NULL,
  evidence TEXT NOT NULL,
  state TEXT NOT NULL CHECK(state IN ('open','acknowledged','resolved')),
  emitted_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_live ON alerts(device, rule, dedup) WHERE state != 'resolved';
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS baselines(
  device TEXT PRIMARY KEY, rev INTEGER NOT NULL,
  phase TEXT NOT NULL CHECK(phase IN ('baselining','review','monitoring')),
  started_ms INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fleet_baselines(
  model TEXT PRIMARY KEY, body TEXT NOT NULL, imported_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS admin_log(
  id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
";

/// A repeated occurrence of an open alert is re-emitted to the sinks at
/// most this often (the alert row itself counts every occurrence).
pub const REEMIT_MS: u64 = 60_000;

pub struct Store {
    conn: Connection,
}

/// What is at the archive's path before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Nothing: a new archive is made there.
    Missing,
    /// An SQLite file at least as long as its header says.
    Whole,
}

/// Looks at the archive file without opening it as a database: an empty
/// file, a file that is not SQLite, or one shorter than the page count in
/// its header (cut off: a disk or a copy that went wrong) is refused, so
/// that it is never silently taken for a new, empty archive.
pub fn check_file(db: &Path) -> Result<FileState> {
    use std::io::Read;
    let refuse = |why: String| StoreError::Refused(format!("{}: {why}", db.display()));
    let mut f = match std::fs::File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(refuse(e.to_string())),
    };
    let len = f.metadata().map_err(|e| refuse(e.to_string()))?.len();
    if len == 0 {
        return Err(refuse("the archive file is empty".into()));
    }
    let mut header = [0u8; 100];
    if len < 100 || f.read_exact(&mut header).is_err() {
        return Err(refuse(format!(
            "{len} bytes: too short for an SQLite archive"
        )));
    }
    if header.get(..16) != Some(b"SQLite format 3\0".as_slice()) {
        return Err(refuse("not an SQLite file (not a Vigil archive)".into()));
    }
    let be16 = |i: usize| {
        header
            .get(i..i + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    let be32 = |i: usize| {
        header
            .get(i..i + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let page_size = match be16(16) {
        1 => 65_536,
        n => u64::from(n),
    };
    // The in-header size counts only when it is current (SQLite's own
    // rule), and only for a quiet archive: while a collector writes, a
    // checkpoint can put the new header in place before the pages it
    // counts, and the WAL holds what the file does not yet.
    let wal = {
        let mut p = db.as_os_str().to_os_string();
        p.push("-wal");
        std::fs::metadata(std::path::PathBuf::from(p)).map_or(0, |m| m.len())
    };
    let pages = if be32(92) == be32(24) && wal == 0 {
        u64::from(be32(28))
    } else {
        0
    };
    if pages.saturating_mul(page_size) > len {
        return Err(refuse(format!(
            "{len} bytes where its header says {} pages of {page_size}: the file is cut off",
            pages
        )));
    }
    // Someone else's SQLite file: tables, none of them ours. Read-only, so
    // nothing is added to it.
    let tables = || -> rusqlite::Result<(i64, i64)> {
        let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.query_row(
            "SELECT count(*), count(*) FILTER (WHERE name = 'frames') FROM sqlite_master WHERE type = 'table'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    };
    match tables() {
        Ok((n, 0)) if n > 0 => Err(refuse(format!(
            "an SQLite file with {n} tables of its own, not a Vigil archive"
        ))),
        // Not readable read-only here (a WAL without its index, say): the
        // real open reports what is wrong, if anything.
        Ok(_) | Err(_) => Ok(FileState::Whole),
    }
}

impl Store {
    /// `check_file`, then `open`: for a process that holds no connection
    /// to the archive yet (an admin command, `serve` at start). Never call
    /// it once a connection is open: `check_file` opens and closes the
    /// file, and closing any descriptor of a file drops every POSIX lock
    /// the process holds on it, SQLite's included.
    pub fn open_checked(db: &Path) -> Result<Store> {
        check_file(db)?;
        Store::open(db)
    }

    /// Opens (creating) the archive in `state_dir`.
    pub fn open(db: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: db.display().to_string(),
            source,
        };
        let conn = Connection::open(db).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // 64 MiB of page cache: inserts from many devices interleave
        // across the tables' B-trees.
        conn.pragma_update(None, "cache_size", -65_536)
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute_batch(access::SCHEMA).map_err(open_err)?;
        conn.execute_batch(chain::SCHEMA).map_err(open_err)?;
        chain::adopt(&conn)?;
        // Every statement of the ingest path stays prepared (the default
        // cache of 16 thrashes and re-prepares per frame).
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store { conn })
    }

    /// For the writer: leave WAL checkpoints to `checkpoint` on another
    /// connection (thread), so copying pages back does not delay acks.
    pub fn manual_checkpoints(&self) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies committed WAL pages into the database without blocking the
    /// writer (`PASSIVE`).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The read connection, for the read-only queries of `store::access`.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
    }

    /// This archive's identity (made once, at the first `serve`): what the
    /// ack ledger beside it is bound to, so a new archive is not mistaken
    /// for one that lost frames.
    pub fn archive_id(&self) -> Result<[u8; 16]> {
        self.conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('archive_id', lower(hex(randomblob(16))))",
            [],
        )?;
        let hex: String =
            self.conn
                .query_row("SELECT value FROM meta WHERE key = 'archive_id'", [], |r| {
                    r.get(0)
                })?;
        let mut id = [0u8; 16];
        let ok = hex.len() == 32
            && id.iter_mut().enumerate().all(|(i, b)| {
                hex.get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map(|v| *b = v)
                    .is_some()
            });
        if !ok {
            return Err(StoreError::Refused(format!(
                "meta.archive_id is `{hex}`, not 32 hex digits"
            )));
        }
        Ok(id)
    }

    /// `PRAGMA quick_check`: every page and index entry readable and well
    /// formed (not that indexes match their tables: `integrity_check`). The
    /// problems it names, none for a sound archive.
    pub fn quick_check(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("PRAGMA quick_check(20)")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut problems = Vec::new();
        for r in rows {
            let r = r?;
            if r != "ok" {
                problems.push(r);
            }
        }
        Ok(problems)
    }

    // ---- devices and enrollment -------------------------------------

    /// Bumped by every change to who is trusted; `serve` polls it.
    pub fn registry_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'registry_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

pub(super) fn bump_registry(tx: &Connection) -> Result<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('registry_version', '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use vigil_protocol::sample::{CpuTicks, Memory};
    use vigil_protocol::{Frame, Header, Sample, Samples, SigningKey, VERSION};

    fn frame(key: &SigningKey, seq: u64, time_ms: u64) -> Vec<u8> {
        frame_with(key, seq, time_ms, 500)
    }

    fn frame_with(key: &SigningKey, seq: u64, time_ms: u64, available_kib: u64) -> Vec<u8> {
        let s = Sample {
            time_ms,
            interval_ms: 1000,
            cpu: CpuTicks {
                user: 10,
                idle: 90,
                ..Default::default()
            },
            memory: Memory {
                total_kib: 1000,
                available_kib,
                ..Default::default()
            },
            ..Default::default()
        };
        let h = Header {
            version: VERSION,
            device: DeviceId::of(&key.verifying_key()),
            boot: 1,
            seq,
            time_ms,
        };
        Frame::new(h, Body::Samples(Samples::new(s)))
            .sign(key)
            .unwrap()
            .to_vec()
    }

    /// Stores a frame received at the device's own time (a good clock).
    fn put(store: &mut Store, key: &SigningKey, bytes: &[u8]) -> bool {
        let time = SignedFrame::parse(bytes).unwrap().header().time_ms;
        put_received(store, key, bytes, time)
    }

    fn put_received(store: &mut Store, key: &SigningKey, bytes: &[u8], received_ms: u64) -> bool {
        let id = DeviceId::of(&key.verifying_key()).to_string();
        let num = store.find_device(&id).unwrap().num;
        let v = SignedFrame::parse(bytes)
            .unwrap()
            .verify(&key.verifying_key())
            .unwrap();
        let body = v.body().unwrap();
        let tx = store.transaction().unwrap();
        let fresh =
            store_frame(&tx, num, &v, Some(&body), &Layout::default(), received_ms).unwrap();
        tx.commit().unwrap();
        fresh
    }

    #[test]
    fn frames_are_stored_once_and_old_samples_roll_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.sqlite")).unwrap();
        let key = SigningKey::from_bytes(&[5; 32]);
        store
            .enroll(&key.verifying_key(), "dev", "", "test", 0)
            .unwrap();
        let id = DeviceId::of(&key.verifying_key()).to_string();
        let (old, new) = (frame(&key, 0, 60_000), frame(&key, 1, 10 * 86_400_000));
        assert!(put(&mut store, &key, &old));
        assert!(!put(&mut store, &key, &old), "a resend is not stored twice");
        assert!(put(&mut store, &key, &new));
        assert_eq!(store.export(&id, 0, u64::MAX / 2).unwrap().len(), 2);
        assert!(store.audit().unwrap().problems.is_empty());

        assert_eq!(store.roll_up(86_400_000).unwrap(), 1);
        let rows = store.export(&id, 0, u64::MAX / 2).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["time_ms"], 10 * 86_400_000);
        let (n, busy, total): (i64, i64, i64) = store
            .conn
            .query_row("SELECT samples, cpu_busy, cpu_total FROM samples_minute WHERE device = ?1 AND minute_ms = 60000", [&id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((n, busy, total), (1, 10, 100));
        let report = store.audit().unwrap();
        assert_eq!(report.frames, 1);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // A replay of the rolled-up frame (SPEC §4): recognized, neither
        // stored nor counted again in its minute.
        assert!(!put(&mut store, &key, &old), "a replay after roll-up");
        assert_eq!(store.roll_up(86_400_000).unwrap(), 0);
        let n: i64 = store
            .conn
            .query_row(
                "SELECT samples FROM samples_minute WHERE device = ?1 AND minute_ms = 60000",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);

        // A minute rolled up in two passes: counts add, the mean is of all.
        assert!(put(&mut store, &key, &frame_with(&key, 2, 120_000, 500)));
        assert!(put(&mut store, &key, &frame_with(&key, 3, 130_000, 800)));
        // A newer frame: the newest is never rolled up (ids must only grow).
        assert!(put(
            &mut store,
            &key,
            &frame_with(&key, 4, 20 * 86_400_000, 100)
        ));
        assert_eq!(store.roll_up(125_000).unwrap(), 1);
        assert_eq!(store.roll_up(200_000).unwrap(), 1);
        let (n, min, avg): (i64, i64, i64) = store
            .conn
            .query_row("SELECT samples, mem_available_kib_min, mem_available_kib_avg FROM samples_minute WHERE device = ?1 AND minute_ms = 120000", [&id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((n, min, avg), (2, 500, 650));
        let report = store.audit().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // The newest frame stays even when it is old (a device clock in the
        // past), so the next frame cannot take its id.
        let max_before: i64 = store
            .conn
            .query_row("SELECT max(id) FROM frames", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            store.roll_up(u64::MAX / 4).unwrap(),
            1,
            "all but the newest"
        );
        assert_eq!(store.roll_up(u64::MAX / 4).unwrap(), 0, "the newest stays");
        assert!(put(&mut store, &key, &frame_with(&key, 5, 1000, 100)));
        let max_after: i64 = store
            .conn
            .query_row("SELECT max(id) FROM frames", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max_after, max_before + 1);
        assert_eq!(store.roll_up(u64::MAX / 4).unwrap(), 1);
        let report = store.audit().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn roll_up_goes_by_the_collectors_receive_time_not_the_device_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.sqlite")).unwrap();
        let key = SigningKey::from_bytes(&[6; 32]);
        store
            .enroll(&key.verifying_key(), "dev", "", "test", 0)
            .unwrap();
        let day = 86_400_000;
        let now = 20_000 * day; // 2024-10
                                // Dated 1970 by a device without an RTC, received today: kept.
        assert!(put_received(&mut store, &key, &frame(&key, 0, 60_000), now));
        // Dated 2100, received 40 days ago: old enough to roll up.
        assert!(put_received(
            &mut store,
            &key,
            &frame(&key, 1, 47_482 * day),
            now - 40 * day
        ));
        // The newest frame, so neither of the above is kept for its id.
        assert!(put_received(&mut store, &key, &frame(&key, 2, now), now));
        assert_eq!(store.roll_up(now - 30 * day).unwrap(), 1);
        let left: Vec<i64> = store
            .conn
            .prepare("SELECT seq FROM frames ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            left,
            [0, 2],
            "the 1970 frame stays, the one from 2100 is rolled up"
        );
        let report = store.audit().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
