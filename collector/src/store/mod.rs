//! The archive: one SQLite file (WAL, synchronous=FULL) holding devices,
//! the signed frames exactly as received, the rows decoded from them,
//! alerts, the event outbox for the sinks, and the admin log. Only this
//! module knows SQL. It stores only `VerifiedFrame`s; `audit` re-verifies
//! every stored frame and the rows decoded from it. `access` holds the
//! access record's tables, `registry` the device keys in memory. Depends
//! only on `alert` (the alert record) and the protocol.

pub mod access;
pub mod registry;

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

impl Store {
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

    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut st = self.conn.prepare(
            "SELECT d.id, d.public_key, d.name, d.model, d.state, d.created_ms, t.last_seen_ms,
                    coalesce(t.frames_received, 0), t.boot, t.high_seq, t.acked_seq, t.above, t.hole_since_ms, d.hello,
                    (SELECT count(*) FROM alerts a WHERE a.device = d.id AND a.state != 'resolved'), d.num
             FROM devices d LEFT JOIN tracks t ON t.device = d.id ORDER BY d.name, d.id",
        )?;
        let rows = st.query_map([], |r| {
            let boot: Option<i64> = r.get(8)?;
            let track = boot.map(|b| Track {
                boot: u32::try_from(b).unwrap_or(0),
                high: r.get::<_, Option<i64>>(9).ok().flatten().map_or(0, u),
                acked: r.get::<_, Option<i64>>(10).ok().flatten().map(u),
                above: Track::decode_above(&r.get::<_, String>(11).unwrap_or_default()),
                hole_since_ms: r.get::<_, Option<i64>>(12).ok().flatten().map(u),
            });
            Ok(Device {
                id: r.get(0)?,
                num: r.get(15)?,
                public_key: r.get(1)?,
                name: r.get(2)?,
                model: r.get(3)?,
                state: DeviceState::parse(&r.get::<_, String>(4)?),
                created_ms: u(r.get(5)?),
                last_seen_ms: r.get::<_, Option<i64>>(6)?.map(u),
                frames_received: u(r.get(7)?),
                track,
                hello: r
                    .get::<_, Option<String>>(13)?
                    .and_then(|h| serde_json::from_str(&h).ok()),
                open_alerts: u(r.get(14)?),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Finds one device by id, id prefix (at least 4 digits) or exact name.
    pub fn find_device(&self, what: &str) -> Result<Device> {
        let all = self.devices()?;
        let by_id: Vec<&Device> = all.iter().filter(|d| d.id == what).collect();
        if let [d] = by_id.as_slice() {
            return Ok((*d).clone());
        }
        let matches: Vec<&Device> = all
            .iter()
            .filter(|d| d.name == what || (what.len() >= 4 && d.id.starts_with(what)))
            .collect();
        match matches.as_slice() {
            [] => Err(StoreError::NoDevice(what.to_string())),
            [d] => Ok((*d).clone()),
            _ => Err(StoreError::Ambiguous(what.to_string())),
        }
    }

    /// Approves a device ahead of time (or a pending one) under a name.
    pub fn enroll(
        &mut self,
        key: &VerifyingKey,
        name: &str,
        model: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<String> {
        let id = DeviceId::of(key).to_string();
        let mut text = String::new();
        let _ = vigil_protocol::frame::write_public_key(&mut text, key);
        let tx = self.transaction()?;
        let existing: Option<String> = tx
            .query_row("SELECT state FROM devices WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .optional()?;
        match existing.as_deref() {
            Some("revoked") => {
                return Err(StoreError::Refused(format!(
                    "device {id} is revoked; a revoked key cannot be enrolled again (generate a new key on the device)"
                )))
            }
            Some(_) => {
                tx.execute(
                    "UPDATE devices SET state = 'approved', name = ?2, model = ?3 WHERE id = ?1",
                    params![id, name, model],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO devices(id, num, public_key, name, model, state, created_ms)
                     VALUES (?1, (SELECT coalesce(max(num), 0) + 1 FROM devices), ?2, ?3, ?4, 'approved', ?5)",
                    params![id, text, name, model, i(now_ms)],
                )?;
            }
        }
        start_baseline(&tx, &id, now_ms)?;
        admin(
            &tx,
            actor,
            "enroll",
            &id,
            json!({"name": name, "model": model, "key": text}),
            now_ms,
        )?;
        bump_registry(&tx)?;
        tx.commit()?;
        Ok(id)
    }

    /// `approve` / `revoke`.
    pub fn set_state(
        &mut self,
        what: &str,
        state: DeviceState,
        actor: &str,
        now_ms: u64,
    ) -> Result<Device> {
        let d = self.find_device(what)?;
        if d.state == DeviceState::Revoked && state != DeviceState::Revoked {
            return Err(StoreError::Refused(format!(
                "device {} is revoked; a revoked key cannot be approved again",
                d.id
            )));
        }
        let tx = self.transaction()?;
        tx.execute(
            "UPDATE devices SET state = ?2 WHERE id = ?1",
            params![d.id, state.name()],
        )?;
        if state == DeviceState::Approved {
            start_baseline(&tx, &d.id, now_ms)?;
        }
        let action = match state {
            DeviceState::Approved => "approve",
            DeviceState::Revoked => "revoke",
            DeviceState::Pending => "pend",
        };
        admin(
            &tx,
            actor,
            action,
            &d.id,
            json!({"name": d.name, "previous": d.state.name()}),
            now_ms,
        )?;
        bump_registry(&tx)?;
        tx.commit()?;
        self.find_device(&d.id)
    }

    // ---- baselines ----------------------------------------------------

    /// A device's baseline row: (rev, phase, started_ms, body).
    pub fn baseline(&self, device: &str) -> Result<Option<BaselineRow>> {
        baseline_row(&self.conn, device)
    }

    pub fn baselines(&self) -> Result<Vec<(String, BaselineRow)>> {
        self.baselines_where("1")
    }

    /// The baselines still learning (the writer closes them when due).
    pub fn baselines_learning(&self) -> Result<Vec<(String, BaselineRow)>> {
        self.baselines_where("phase = 'baselining'")
    }

    /// Every device's baseline revision, without the bodies.
    pub fn baseline_revs(&self) -> Result<BTreeMap<String, i64>> {
        let mut st = self.conn.prepare("SELECT device, rev FROM baselines")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn baselines_where(&self, filter: &str) -> Result<Vec<(String, BaselineRow)>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT device, rev, phase, started_ms, body FROM baselines WHERE {filter} ORDER BY device"
        ))?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                BaselineRow {
                    rev: r.get(1)?,
                    phase: r.get(2)?,
                    started_ms: u(r.get(3)?),
                    body: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// An admin change to a baseline (close, approve, reset): a new
    /// revision, recorded in the admin log; a running `serve` picks it up
    /// at its next registry check.
    #[allow(clippy::too_many_arguments)]
    pub fn set_baseline(
        &mut self,
        device: &str,
        phase: &str,
        started_ms: u64,
        body: &str,
        actor: &str,
        action: &str,
        detail: Value,
        now_ms: u64,
    ) -> Result<()> {
        let tx = self.transaction()?;
        tx.execute(
            "INSERT INTO baselines(device, rev, phase, started_ms, body) VALUES (?1, 1, ?2, ?3, ?4)
             ON CONFLICT(device) DO UPDATE SET rev = rev + 1, phase = ?2, started_ms = ?3, body = ?4",
            params![device, phase, i(started_ms), body],
        )?;
        admin(&tx, actor, action, device, detail, now_ms)?;
        bump_registry(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The fleet baseline imported for a model, if any.
    pub fn fleet_baseline(&self, model: &str) -> Result<Option<String>> {
        fleet_baseline(&self.conn, model)
    }

    /// Stores a fleet baseline for `model` and puts every device of that
    /// model into monitoring against it (`bodies` gives each device's new
    /// baseline body). Recorded in the admin log.
    pub fn import_fleet_baseline(
        &mut self,
        model: &str,
        fleet_body: &str,
        device_body: impl Fn(&str) -> String,
        actor: &str,
        detail: Value,
        now_ms: u64,
    ) -> Result<Vec<String>> {
        let devices: Vec<String> = self
            .devices()?
            .into_iter()
            .filter(|d| d.model == model && d.state != DeviceState::Revoked)
            .map(|d| d.id)
            .collect();
        let tx = self.transaction()?;
        tx.execute(
            "INSERT INTO fleet_baselines(model, body, imported_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(model) DO UPDATE SET body = ?2, imported_ms = ?3",
            params![model, fleet_body, i(now_ms)],
        )?;
        for d in &devices {
            tx.execute(
                "INSERT INTO baselines(device, rev, phase, started_ms, body) VALUES (?1, 1, 'monitoring', ?2, ?3)
                 ON CONFLICT(device) DO UPDATE SET rev = rev + 1, phase = 'monitoring', body = ?3",
                params![d, i(now_ms), device_body(d)],
            )?;
        }
        let mut detail = detail;
        detail["devices"] = json!(devices);
        admin(&tx, actor, "baseline-import", model, detail, now_ms)?;
        bump_registry(&tx)?;
        tx.commit()?;
        Ok(devices)
    }

    /// Calls `f` with every archived sample of `device` that arrived in
    /// `[from_ms, to_ms)` (the collector's clock: a device's clock may be
    /// off), in the device's time order, rebuilt as the device sent it
    /// (interfaces named by `Layout`): what a baseline learns from.
    pub fn for_each_sample(
        &self,
        device: &str,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(&vigil_protocol::sample::Sample, &Layout),
    ) -> Result<u64> {
        use vigil_protocol::sample::{
            CpuTicks, DiskCounters, Memory, NetCounters, Pressure, Sample,
        };
        let mut st = self.conn.prepare(
            "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.device = (SELECT num FROM devices WHERE id = ?1)
               AND f.received_ms >= ?2 AND f.received_ms < ?3
             ORDER BY s.time_ms, f.boot, f.seq, s.idx",
        )?;
        let mut net = self.conn.prepare(
            "SELECT iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 AND idx = ?2 ORDER BY iface",
        )?;
        let mut disk = self.conn.prepare(
            "SELECT reads, read_sectors, writes, write_sectors, io_ms
             FROM sample_disk WHERE frame = ?1 AND idx = ?2 ORDER BY disk",
        )?;
        let mut rows = st.query(params![device, i(from_ms), i(to_ms)])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let g = |k: usize| r.get::<_, i64>(k).map(u);
            let o = |k: usize| r.get::<_, Option<i64>>(k).map(|v| v.map(u));
            let (frame, idx): (i64, i64) = (r.get(0)?, r.get(1)?);
            let pressure = match (o(17)?, o(18)?, o(19)?, o(20)?, o(21)?) {
                (Some(a), Some(b), Some(c), Some(d), Some(e)) => Some(Pressure {
                    cpu_some_ms: a,
                    memory_some_ms: b,
                    memory_full_ms: c,
                    io_some_ms: d,
                    io_full_ms: e,
                }),
                _ => None,
            };
            let mut s = Sample {
                time_ms: g(2)?,
                interval_ms: g(3)?,
                uptime_s: g(4)?,
                cpu: CpuTicks {
                    user: g(5)?,
                    nice: g(6)?,
                    system: g(7)?,
                    idle: g(8)?,
                    iowait: g(9)?,
                    irq: g(10)?,
                    softirq: g(11)?,
                    steal: g(12)?,
                },
                memory: Memory {
                    total_kib: g(13)?,
                    available_kib: g(14)?,
                    swap_total_kib: g(15)?,
                    swap_used_kib: g(16)?,
                },
                pressure,
                load_centi: [g(22)?, g(23)?, g(24)?],
                processes: g(25)?,
                ..Sample::default()
            };
            let mut layout = Layout::default();
            let mut nets = net.query(params![frame, idx])?;
            while let Some(x) = nets.next()? {
                let h = |k: usize| x.get::<_, i64>(k).map(u);
                let index = u8::try_from(layout.interfaces.len()).unwrap_or(u8::MAX);
                layout.interfaces.push(x.get(0)?);
                let _ = s.net.push(NetCounters {
                    iface: index,
                    rx_bytes: h(1)?,
                    rx_packets: h(2)?,
                    rx_errors: h(3)?,
                    rx_dropped: h(4)?,
                    tx_bytes: h(5)?,
                    tx_packets: h(6)?,
                    tx_errors: h(7)?,
                    tx_dropped: h(8)?,
                });
            }
            let mut disks = disk.query(params![frame, idx])?;
            while let Some(x) = disks.next()? {
                let h = |k: usize| x.get::<_, i64>(k).map(u);
                let index = u8::try_from(s.disk.len()).unwrap_or(u8::MAX);
                let _ = s.disk.push(DiskCounters {
                    disk: index,
                    reads: h(0)?,
                    read_sectors: h(1)?,
                    writes: h(2)?,
                    write_sectors: h(3)?,
                    io_ms: h(4)?,
                });
            }
            f(&s, &layout);
            n += 1;
        }
        Ok(n)
    }

    // ---- alerts --------------------------------------------------------

    pub fn alerts(
        &self,
        open_only: bool,
        device: Option<&str>,
        min_severity: Option<crate::alert::Severity>,
    ) -> Result<Vec<Alert>> {
        let mut st = self.conn.prepare(
            "SELECT a.id, a.device, d.name, a.rule, a.severity, a.first_seen_ms, a.last_seen_ms,
                    a.count, a.evidence, a.state
             FROM alerts a LEFT JOIN devices d ON d.id = a.device
             WHERE (?1 = 0 OR a.state != 'resolved') AND (?2 IS NULL OR a.device = ?2)
             ORDER BY a.last_seen_ms DESC, a.id DESC",
        )?;
        let rows = st.query_map(params![i64::from(open_only), device], alert_row)?;
        let mut out: Vec<Alert> = rows.collect::<std::result::Result<_, _>>()?;
        if let Some(min) = min_severity {
            out.retain(|a| {
                crate::alert::Severity::from_name(&a.severity).is_some_and(|s| s >= min)
            });
        }
        Ok(out)
    }

    pub fn alert(&self, id: i64) -> Result<Alert> {
        self.conn
            .query_row(
                "SELECT a.id, a.device, d.name, a.rule, a.severity, a.first_seen_ms, a.last_seen_ms,
                        a.count, a.evidence, a.state
                 FROM alerts a LEFT JOIN devices d ON d.id = a.device WHERE a.id = ?1",
                [id],
                alert_row,
            )
            .optional()?
            .ok_or(StoreError::NoAlert(id))
    }

    /// `ack` / `resolve`: changes an alert's state, audited and emitted.
    pub fn set_alert_state(
        &mut self,
        id: i64,
        state: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<Alert> {
        let before = self.alert(id)?;
        let tx = self.transaction()?;
        tx.execute(
            "UPDATE alerts SET state = ?2 WHERE id = ?1",
            params![id, state],
        )?;
        let action = if state == "resolved" {
            "resolve"
        } else {
            "ack"
        };
        admin(
            &tx,
            actor,
            action,
            &id.to_string(),
            json!({"rule": before.rule, "device": before.device, "previous": before.state}),
            now_ms,
        )?;
        tx.commit()?;
        let after = self.alert(id)?;
        let tx = self.transaction()?;
        push_event(&tx, &after.to_json(), now_ms)?;
        tx.commit()?;
        Ok(after)
    }

    // ---- the outbox ------------------------------------------------------

    pub fn events_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Value)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, body FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = st.query_map(params![cursor, i64::try_from(limit).unwrap_or(1000)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push((id, serde_json::from_str(&body).unwrap_or(Value::Null)));
        }
        Ok(out)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- reading telemetry -----------------------------------------------

    /// Samples of a device in `[from, to)`, oldest first, as JSON objects.
    pub fn export(&self, device: &str, from_ms: u64, to_ms: u64) -> Result<Vec<Value>> {
        let mut st = self.conn.prepare(
            "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    load1_centi, load5_centi, load15_centi, processes
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.device = (SELECT num FROM devices WHERE id = ?1) AND s.time_ms >= ?2 AND s.time_ms < ?3
             ORDER BY s.time_ms, f.boot, f.seq, s.idx",
        )?;
        let rows = st.query_map(params![device, i(from_ms), i(to_ms)], sample_json)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, v) = row?;
            out.push(self.with_network(key, v)?);
        }
        Ok(out)
    }

    fn with_network(&self, (frame, idx): (i64, i64), mut v: Value) -> Result<Value> {
        let mut net = self.conn.prepare_cached(
            "SELECT iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 AND idx = ?2 ORDER BY iface",
        )?;
        let ifaces = net.query_map(params![frame, idx], |r| {
            Ok(json!({
                "iface": r.get::<_, String>(0)?,
                "rx_bytes": r.get::<_, i64>(1)?, "rx_packets": r.get::<_, i64>(2)?,
                "rx_errors": r.get::<_, i64>(3)?, "rx_dropped": r.get::<_, i64>(4)?,
                "tx_bytes": r.get::<_, i64>(5)?, "tx_packets": r.get::<_, i64>(6)?,
                "tx_errors": r.get::<_, i64>(7)?, "tx_dropped": r.get::<_, i64>(8)?,
            }))
        })?;
        v["network"] = Value::Array(ifaces.collect::<std::result::Result<_, _>>()?);
        Ok(v)
    }

    /// The newest sample of a device (highest boot and sequence).
    pub fn latest_sample(&self, device: &str) -> Result<Option<Value>> {
        let row = self
            .conn
            .query_row(
                "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                        cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                        mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                        load1_centi, load5_centi, load15_centi, processes
                 FROM frames f JOIN samples s ON s.frame = f.id
                 WHERE f.device = (SELECT num FROM devices WHERE id = ?1) AND f.kind = 'samples'
                 ORDER BY f.boot DESC, f.seq DESC, s.idx DESC LIMIT 1",
                [device],
                sample_json,
            )
            .optional()?;
        row.map(|(key, v)| self.with_network(key, v)).transpose()
    }

    pub fn admin_log(&self) -> Result<Vec<Value>> {
        let mut st = self.conn.prepare(
            "SELECT id, time_ms, actor, action, target, detail FROM admin_log ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?,
                "time": crate::alert::rfc3339(u(r.get(1)?)),
                "actor": r.get::<_, String>(2)?,
                "action": r.get::<_, String>(3)?,
                "target": r.get::<_, String>(4)?,
                "detail": serde_json::from_str::<Value>(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
            }))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    // ---- audit ------------------------------------------------------------

    /// Re-verifies every stored frame against its device's key and checks
    /// the rows decoded from it. Returns one line per problem.
    pub fn audit(&self) -> Result<AuditReport> {
        let keys: BTreeMap<String, Option<VerifyingKey>> = self
            .devices()?
            .into_iter()
            .map(|d| (d.id, vigil_protocol::frame::parse_public_key(&d.public_key)))
            .collect();
        let mut report = AuditReport::default();
        let mut st = self.conn.prepare(
            "SELECT d.id, f.boot, f.seq, f.bytes, f.id FROM frames f JOIN devices d ON d.num = f.device
                 ORDER BY f.device, f.boot, f.seq",
        )?;
        let mut rows = st.query([])?;
        // The Hello in force names interfaces and disks for later samples.
        let mut layout: Option<(String, u32, Layout)> = None;
        let mut expected = Rows::default();
        while let Some(r) = rows.next()? {
            let device: String = r.get(0)?;
            let boot = u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX);
            let seq = u(r.get(2)?);
            let frame_id: i64 = r.get(4)?;
            report.frames += 1;
            let at = format!("frame {device}/{boot}/{seq}");
            // Whatever was written into the column, audit it as bytes.
            let bytes: Vec<u8> = match r.get_ref(3)? {
                rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
                rusqlite::types::ValueRef::Text(t) => t.to_vec(),
                _ => Vec::new(),
            };
            let Some(Some(key)) = keys.get(&device) else {
                report
                    .problems
                    .push(format!("{at}: no key on record for the device"));
                continue;
            };
            let verified = SignedFrame::parse(&bytes)
                .ok()
                .and_then(|f| f.verify(key).ok());
            let Some(v) = verified else {
                report
                    .problems
                    .push(format!("{at}: signature does not verify"));
                continue;
            };
            let h = v.header();
            if h.device.to_string() != device || h.boot != boot || h.seq != seq {
                report
                    .problems
                    .push(format!("{at}: row key does not match the signed header"));
                continue;
            }
            if !layout
                .as_ref()
                .is_some_and(|(d, b, _)| *d == device && *b == boot)
            {
                layout = Some((device.clone(), boot, Layout::default()));
            }
            let Ok(body) = v.body() else { continue };
            if let (Body::Hello(hello), Some((_, _, l))) = (&body, layout.as_mut()) {
                *l = Layout::of(hello);
            }
            expected.clear();
            if let Some((_, _, l)) = &layout {
                expected.add(&v, &body, l);
            }
            let mut stored = Rows::load(&self.conn, frame_id)?;
            stored.sort();
            expected.sort();
            if stored != expected {
                report.problems.push(format!(
                    "{at}: decoded rows differ from the signed frame ({})",
                    stored.diff(&expected)
                ));
            }
        }
        // Rows without a frame behind them.
        for table in ["samples", "sample_net", "sample_disk", "socket_changes"] {
            let orphans: i64 = self.conn.query_row(
                &format!(
                    "SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM frames f WHERE f.id = t.frame)"
                ),
                [],
                |r| r.get(0),
            )?;
            if orphans > 0 {
                report
                    .problems
                    .push(format!("{table}: {orphans} rows without a signed frame"));
            }
        }
        Ok(report)
    }

    // ---- retention ---------------------------------------------------------

    /// Rolls raw samples older than `cutoff_ms` up into per-minute
    /// aggregates and deletes them with their `Samples` frames. Security
    /// frames, socket changes and alerts are kept.
    pub fn roll_up(&mut self, cutoff_ms: u64) -> Result<u64> {
        let tx = self.transaction()?;
        tx.execute(
            "INSERT INTO samples_minute(device, minute_ms, samples, cpu_busy, cpu_total,
                mem_available_kib_min, mem_available_kib_avg, swap_used_kib_max, processes_max,
                load1_centi_max, rx_bytes, tx_bytes)
             SELECT (SELECT id FROM devices d WHERE d.num = f.device), s.time_ms / 60000 * 60000, count(*),
                sum(cpu_user + cpu_nice + cpu_system + cpu_iowait + cpu_irq + cpu_softirq + cpu_steal),
                sum(cpu_user + cpu_nice + cpu_system + cpu_idle + cpu_iowait + cpu_irq + cpu_softirq + cpu_steal),
                min(mem_available_kib), avg(mem_available_kib), max(swap_used_kib), max(processes),
                max(load1_centi),
                coalesce(sum((SELECT sum(rx_bytes) FROM sample_net n WHERE n.frame = s.frame AND n.idx = s.idx)), 0),
                coalesce(sum((SELECT sum(tx_bytes) FROM sample_net n WHERE n.frame = s.frame AND n.idx = s.idx)), 0)
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.kind = 'samples' AND f.time_ms < ?1
             GROUP BY f.device, s.time_ms / 60000
             ON CONFLICT(device, minute_ms) DO UPDATE SET
                samples = samples + excluded.samples, cpu_busy = cpu_busy + excluded.cpu_busy,
                cpu_total = cpu_total + excluded.cpu_total,
                mem_available_kib_min = min(mem_available_kib_min, excluded.mem_available_kib_min),
                mem_available_kib_avg = (mem_available_kib_avg * samples
                    + excluded.mem_available_kib_avg * excluded.samples)
                    / (samples + excluded.samples),
                swap_used_kib_max = max(swap_used_kib_max, excluded.swap_used_kib_max),
                processes_max = max(processes_max, excluded.processes_max),
                load1_centi_max = max(load1_centi_max, excluded.load1_centi_max),
                rx_bytes = rx_bytes + excluded.rx_bytes, tx_bytes = tx_bytes + excluded.tx_bytes",
            [i(cutoff_ms)],
        )?;
        for table in ["samples", "sample_net", "sample_disk"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE frame IN
                     (SELECT id FROM frames WHERE kind = 'samples' AND time_ms < ?1)"
                ),
                [i(cutoff_ms)],
            )?;
        }
        // Security frames and their rows are kept.
        let frames = tx.execute(
            "DELETE FROM frames WHERE kind = 'samples' AND time_ms < ?1",
            [i(cutoff_ms)],
        )?;
        tx.commit()?;
        Ok(u64::try_from(frames).unwrap_or(0))
    }
}

#[derive(Debug, Default)]
pub struct AuditReport {
    pub frames: u64,
    pub problems: Vec<String>,
}

/// A `samples` row (frame, idx, then the columns in `export`'s order) as
/// JSON, with its key for the network rows.
fn sample_json(r: &rusqlite::Row<'_>) -> rusqlite::Result<((i64, i64), Value)> {
    let g = |k: usize| r.get::<_, i64>(k);
    Ok((
        (g(0)?, g(1)?),
        json!({
            "time": crate::alert::rfc3339(u(g(2)?)),
            "time_ms": g(2)?,
            "interval_ms": g(3)?,
            "uptime_s": g(4)?,
            "cpu": {"user": g(5)?, "nice": g(6)?, "system": g(7)?, "idle": g(8)?,
                    "iowait": g(9)?, "irq": g(10)?, "softirq": g(11)?, "steal": g(12)?},
            "memory": {"total_kib": g(13)?, "available_kib": g(14)?,
                       "swap_total_kib": g(15)?, "swap_used_kib": g(16)?},
            "load": [g(17)? as f64 / 100.0, g(18)? as f64 / 100.0, g(19)? as f64 / 100.0],
            "processes": g(20)?,
        }),
    ))
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    Ok(Alert {
        id: r.get(0)?,
        device: r.get(1)?,
        device_name: r.get(2)?,
        rule: r.get(3)?,
        severity: r.get(4)?,
        first_seen_ms: u(r.get(5)?),
        last_seen_ms: u(r.get(6)?),
        count: u(r.get(7)?),
        evidence: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
        state: r.get(9)?,
    })
}

/// A stored baseline: its revision (bumped by every admin change), phase,
/// start, and the body `baseline` reads (empty: just started).
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineRow {
    pub rev: i64,
    pub phase: String,
    pub started_ms: u64,
    pub body: String,
}

pub fn baseline_row(conn: &Connection, device: &str) -> Result<Option<BaselineRow>> {
    Ok(conn
        .prepare_cached("SELECT rev, phase, started_ms, body FROM baselines WHERE device = ?1")?
        .query_row([device], |r| {
            Ok(BaselineRow {
                rev: r.get(0)?,
                phase: r.get(1)?,
                started_ms: u(r.get(2)?),
                body: r.get(3)?,
            })
        })
        .optional()?)
}

pub fn fleet_baseline(conn: &Connection, model: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT body FROM fleet_baselines WHERE model = ?1")?
        .query_row([model], |r| r.get(0))
        .optional()?)
}

/// The writer's save of a baseline's running state. Only if nobody
/// changed it since `rev` (an admin command wins); false then.
pub fn save_baseline(
    tx: &Connection,
    device: &str,
    rev: i64,
    phase: &str,
    body: &str,
) -> Result<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE baselines SET phase = ?3, body = ?4 WHERE device = ?1 AND rev = ?2",
        )?
        .execute(params![device, rev, phase, body])?;
    Ok(n == 1)
}

/// A baseline starts when a device is first approved (enrolled ahead of
/// time, or a pending device approved); an existing one is kept.
fn start_baseline(tx: &Connection, device: &str, now_ms: u64) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO baselines(device, rev, phase, started_ms, body) VALUES (?1, 0, 'baselining', ?2, '')",
        params![device, i(now_ms)],
    )?;
    Ok(())
}

/// For the writer: a device that reached it without a baseline row (an
/// archive from before baselines) starts one now.
pub fn ensure_baseline(tx: &Connection, device: &str, now_ms: u64) -> Result<()> {
    start_baseline(tx, device, now_ms)
}

fn bump_registry(tx: &Connection) -> Result<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('registry_version', '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )?;
    Ok(())
}

fn push_event(tx: &Connection, body: &Value, now_ms: u64) -> Result<()> {
    tx.prepare_cached("INSERT INTO events(time_ms, body) VALUES (?1, ?2)")?
        .execute(params![i(now_ms), body.to_string()])?;
    Ok(())
}

/// Records an administrative action and queues it as an audit event.
pub fn admin(
    tx: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
    now_ms: u64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO admin_log(time_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![i(now_ms), actor, action, target, detail.to_string()],
    )?;
    let id = tx.last_insert_rowid();
    push_event(
        tx,
        &json!({"type": "audit", "id": id, "time": crate::alert::rfc3339(now_ms),
                "actor": actor, "action": action, "target": target, "detail": detail,
                "severity": "low"}),
        now_ms,
    )
}

/// Merges an occurrence into the live alert of the same (device, rule,
/// dedup) or opens a new one; queues an event when it is new or has not
/// been emitted for `REEMIT_MS`. Returns the alert id and whether it is new.
pub fn raise(tx: &Connection, r: &Raise) -> Result<(i64, bool)> {
    let live: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT id, emitted_ms FROM alerts WHERE device = ?1 AND rule = ?2 AND dedup = ?3 AND state != 'resolved'",
        )?
        .query_row(params![r.device, r.rule.id, r.dedup], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (id, new, emit) = match live {
        Some((id, emitted)) => {
            let emit = r.time_ms.saturating_sub(u(emitted)) >= REEMIT_MS;
            tx.prepare_cached(
                "UPDATE alerts SET count = count + 1, last_seen_ms = max(last_seen_ms, ?2), evidence = ?3,
                        emitted_ms = CASE WHEN ?4 THEN ?2 ELSE emitted_ms END
                 WHERE id = ?1",
            )?
            .execute(params![id, i(r.time_ms), r.evidence.to_string(), emit])?;
            (id, false, emit)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO alerts(device, rule, severity, dedup, first_seen_ms, last_seen_ms, count,
                                    evidence, state, emitted_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, ?6, 'open', ?5)",
            )?
            .execute(params![
                r.device,
                r.rule.id,
                r.rule.severity.name(),
                r.dedup,
                i(r.time_ms),
                r.evidence.to_string()
            ])?;
            (tx.last_insert_rowid(), true, true)
        }
    };
    if emit {
        let a = tx
            .prepare_cached(
                "SELECT a.id, a.device, d.name, a.rule, a.severity, a.first_seen_ms, a.last_seen_ms,
                        a.count, a.evidence, a.state
                 FROM alerts a LEFT JOIN devices d ON d.id = a.device WHERE a.id = ?1",
            )?
            .query_row([id], alert_row)?;
        push_event(tx, &a.to_json(), r.time_ms)?;
    }
    Ok((id, new))
}

/// Inserts a device seen for the first time with a valid self-signed Hello.
pub fn insert_pending(
    tx: &Connection,
    key: &VerifyingKey,
    hello: &Hello,
    peer: &str,
    now_ms: u64,
) -> Result<()> {
    let mut text = String::new();
    let _ = vigil_protocol::frame::write_public_key(&mut text, key);
    tx.execute(
        "INSERT OR IGNORE INTO devices(id, num, public_key, name, state, created_ms, hello, peer)
         VALUES (?1, (SELECT coalesce(max(num), 0) + 1 FROM devices), ?2, ?3, 'pending', ?4, ?5, ?6)",
        params![
            DeviceId::of(key).to_string(),
            text,
            hello.hostname.as_str(),
            i(now_ms),
            hello_json(hello).to_string(),
            peer
        ],
    )?;
    bump_registry(tx)?;
    Ok(())
}

/// Stores a verified frame once; `false` when (device, boot, seq) is
/// already archived (a resend), in which case nothing else is written.
pub fn store_frame(
    tx: &Connection,
    num: i64,
    v: &VerifiedFrame<'_>,
    body: Option<&Body>,
    layout: &Layout,
    received_ms: u64,
) -> Result<bool> {
    let h = v.header();
    let kind = v.kind().map_or("unknown", |k| k.name());
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO frames(device, boot, seq, kind, time_ms, received_ms, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            num,
            h.boot,
            i(h.seq),
            kind,
            i(h.time_ms),
            i(received_ms),
            v.as_bytes()
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    if let Some(body) = body {
        let mut rows = Rows::default();
        rows.add(v, body, layout);
        rows.insert(tx, tx.last_insert_rowid())?;
    }
    Ok(true)
}

/// Updates a device after a batch: counters, last seen, sequence track,
/// inventory (when a Hello came).
pub fn update_device(
    tx: &Connection,
    device: &str,
    frames: u64,
    last_seen_ms: u64,
    track: &Track,
    hello: Option<&Hello>,
    peer: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO tracks(device, last_seen_ms, frames_received, boot, high_seq, acked_seq, above, hole_since_ms)
         VALUES (?1, ?3, ?2, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(device) DO UPDATE SET
            frames_received = frames_received + excluded.frames_received,
            last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
            boot = excluded.boot, high_seq = excluded.high_seq, acked_seq = excluded.acked_seq,
            above = excluded.above, hole_since_ms = excluded.hole_since_ms",
    )?
    .execute(params![
        device,
        i(frames),
        i(last_seen_ms),
        track.boot,
        i(track.high),
        track.acked.map(i),
        track.encode_above(),
        track.hole_since_ms.map(i),
    ])?;
    if let Some(h) = hello {
        tx.prepare_cached("UPDATE devices SET hello = ?2, peer = ?3 WHERE id = ?1")?
            .execute(params![device, hello_json(h).to_string(), peer])?;
    }
    Ok(())
}

/// Approved devices silent since before `cutoff_ms` (never seen counts
/// from enrollment).
/// The archive's number for a device id.
pub fn device_num(tx: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT num FROM devices WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// A device's enrollment state in the archive, if it is there.
pub fn device_state(tx: &Connection, id: &str) -> Result<Option<DeviceState>> {
    Ok(tx
        .prepare_cached("SELECT state FROM devices WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|s| DeviceState::parse(&s)))
}

pub fn silent_devices(conn: &Connection, cutoff_ms: u64) -> Result<Vec<(String, Option<u64>)>> {
    let mut st = conn.prepare_cached(
        "SELECT d.id, t.last_seen_ms FROM devices d LEFT JOIN tracks t ON t.device = d.id
         WHERE d.state = 'approved' AND coalesce(t.last_seen_ms, d.created_ms) < ?1",
    )?;
    let rows = st.query_map([i(cutoff_ms)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?.map(u)))
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Resolves an open `rule` alert for a device (e.g. silence ended).
pub fn resolve_rule(tx: &Connection, device: &str, rule: &str) -> Result<usize> {
    Ok(tx
        .prepare_cached("UPDATE alerts SET state = 'resolved' WHERE device = ?1 AND rule = ?2 AND state = 'open'")?
        .execute(params![device, rule])?)
}

pub fn hello_json(h: &Hello) -> Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    json!({
        "agent_version": h.agent_version.as_str(),
        "hostname": h.hostname.as_str(),
        "kernel_release": h.kernel_release.as_str(),
        "os_release": h.os_release.as_str(),
        "arch": h.arch.as_str(),
        "kernel_boot_id": hex(&h.kernel_boot_id),
        "boot_time": crate::alert::rfc3339(h.boot_time_s.saturating_mul(1000)),
        "cpus": h.cpus,
        "interfaces": h.interfaces.iter().map(|i| json!({
            "name": i.name.as_str(),
            "mac": i.mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
        })).collect::<Vec<_>>(),
        "disks": h.disks.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "manifests": h.manifests.iter().map(|m| json!({
            "class": m.class.name(), "issuer": m.issuer.as_str(), "scope": m.scope.as_str(), "version": m.version,
        })).collect::<Vec<_>>(),
    })
}

/// Interface and disk names from the Hello in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub interfaces: Vec<String>,
    pub disks: Vec<String>,
}

impl Layout {
    pub fn of(h: &Hello) -> Layout {
        Layout {
            interfaces: h.interfaces.iter().map(|i| i.name.to_string()).collect(),
            disks: h.disks.iter().map(|d| d.to_string()).collect(),
        }
    }

    pub fn from_json(v: &Value) -> Layout {
        let names = |k: &str, sub: Option<&str>| {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| match sub {
                            Some(s) => x.get(s).and_then(Value::as_str),
                            None => x.as_str(),
                        })
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Layout {
            interfaces: names("interfaces", Some("name")),
            disks: names("disks", None),
        }
    }

    fn name(names: &[String], index: u8) -> String {
        names
            .get(usize::from(index))
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }
}

/// One socket change as stored: idx, time, snapshot, change, kind, proto,
/// local, remote, uid, process.
type SocketRow = (
    i64,
    i64,
    bool,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
);

/// The rows one frame decodes to; built the same way at ingest and at
/// audit, so the audit compares like with like.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rows {
    samples: Vec<[Option<i64>; 25]>,
    net: Vec<(i64, String, [i64; 8])>,
    disk: Vec<(i64, String, [i64; 5])>,
    sockets: Vec<SocketRow>,
}

fn endpoint(e: &vigil_protocol::body::Endpoint) -> String {
    match e.addr {
        vigil_protocol::body::Addr::V4(a) => format!("{}:{}", std::net::Ipv4Addr::from(a), e.port),
        vigil_protocol::body::Addr::V6(a) => {
            format!("[{}]:{}", std::net::Ipv6Addr::from(a), e.port)
        }
    }
}

impl Rows {
    fn clear(&mut self) {
        *self = Rows::default();
    }

    fn add(&mut self, v: &VerifiedFrame<'_>, body: &Body, layout: &Layout) {
        match body {
            Body::Samples(batch) => {
                for (idx, s) in batch.as_slice().iter().enumerate() {
                    let idx = i64::try_from(idx).unwrap_or(0);
                    let p = s.pressure;
                    let c = s.cpu;
                    let m = s.memory;
                    self.samples.push([
                        Some(idx),
                        Some(i(s.time_ms)),
                        Some(i(s.interval_ms)),
                        Some(i(s.uptime_s)),
                        Some(i(c.user)),
                        Some(i(c.nice)),
                        Some(i(c.system)),
                        Some(i(c.idle)),
                        Some(i(c.iowait)),
                        Some(i(c.irq)),
                        Some(i(c.softirq)),
                        Some(i(c.steal)),
                        Some(i(m.total_kib)),
                        Some(i(m.available_kib)),
                        Some(i(m.swap_total_kib)),
                        Some(i(m.swap_used_kib)),
                        p.map(|p| i(p.cpu_some_ms)),
                        p.map(|p| i(p.memory_some_ms)),
                        p.map(|p| i(p.memory_full_ms)),
                        p.map(|p| i(p.io_some_ms)),
                        p.map(|p| i(p.io_full_ms)),
                        Some(i(s.load_centi[0])),
                        Some(i(s.load_centi[1])),
                        Some(i(s.load_centi[2])),
                        Some(i(s.processes)),
                    ]);
                    for n in &s.net {
                        self.net.push((
                            idx,
                            Layout::name(&layout.interfaces, n.iface),
                            [
                                n.rx_bytes,
                                n.rx_packets,
                                n.rx_errors,
                                n.rx_dropped,
                                n.tx_bytes,
                                n.tx_packets,
                                n.tx_errors,
                                n.tx_dropped,
                            ]
                            .map(i),
                        ));
                    }
                    for d in &s.disk {
                        self.disk.push((
                            idx,
                            Layout::name(&layout.disks, d.disk),
                            [d.reads, d.read_sectors, d.writes, d.write_sectors, d.io_ms].map(i),
                        ));
                    }
                }
            }
            Body::Sockets(s) => {
                for (idx, c) in s.changes.iter().enumerate() {
                    self.sockets.push((
                        i64::try_from(idx).unwrap_or(0),
                        i(v.header().time_ms),
                        s.snapshot,
                        format!("{:?}", c.change).to_lowercase(),
                        format!("{:?}", c.kind).to_lowercase(),
                        format!("{:?}", c.proto).to_lowercase(),
                        endpoint(&c.local),
                        c.remote.as_ref().map(endpoint),
                        i64::from(c.uid),
                        c.process.to_string(),
                    ));
                }
            }
            _ => {}
        }
    }

    fn insert(&self, tx: &Connection, frame: i64) -> Result<()> {
        if !self.samples.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO samples(frame, idx, time_ms, interval_ms, uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                         ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
            )?;
            for s in &self.samples {
                let mut p: Vec<&dyn rusqlite::ToSql> = vec![&frame];
                p.extend(s.iter().map(|v| v as &dyn rusqlite::ToSql));
                st.execute(p.as_slice())?;
            }
        }
        if !self.net.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO sample_net(frame, idx, iface, rx_bytes, rx_packets, rx_errors, rx_dropped,
                    tx_bytes, tx_packets, tx_errors, tx_dropped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for (idx, iface, c) in &self.net {
                st.execute(params![
                    frame, idx, iface, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
                ])?;
            }
        }
        if !self.disk.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO sample_disk(frame, idx, disk, reads, read_sectors, writes, write_sectors, io_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (idx, disk, c) in &self.disk {
                st.execute(params![frame, idx, disk, c[0], c[1], c[2], c[3], c[4]])?;
            }
        }
        if !self.sockets.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO socket_changes(frame, idx, time_ms, snapshot, change, kind, proto, local, remote, uid, process)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for s in &self.sockets {
                st.execute(params![
                    frame, s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7, s.8, s.9
                ])?;
            }
        }
        Ok(())
    }

    fn load(conn: &Connection, frame: i64) -> Result<Rows> {
        let mut rows = Rows::default();
        let mut st = conn.prepare_cached(
            "SELECT idx, time_ms, interval_ms, uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes
             FROM samples WHERE frame = ?1 ORDER BY idx",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut s = [None; 25];
            for (k, slot) in s.iter_mut().enumerate() {
                *slot = r.get::<_, Option<i64>>(k)?;
            }
            rows.samples.push(s);
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 ORDER BY idx, iface",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut c = [0i64; 8];
            for (k, slot) in c.iter_mut().enumerate() {
                *slot = r.get(k + 2)?;
            }
            rows.net.push((r.get(0)?, r.get(1)?, c));
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, disk, reads, read_sectors, writes, write_sectors, io_ms
             FROM sample_disk WHERE frame = ?1 ORDER BY idx, disk",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut c = [0i64; 5];
            for (k, slot) in c.iter_mut().enumerate() {
                *slot = r.get(k + 2)?;
            }
            rows.disk.push((r.get(0)?, r.get(1)?, c));
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, time_ms, snapshot, change, kind, proto, local, remote, uid, process
             FROM socket_changes WHERE frame = ?1 ORDER BY idx",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            rows.sockets.push((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ));
        }
        Ok(rows)
    }

    fn sort(&mut self) {
        self.net.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        self.disk.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }

    /// Names what differs (both sorted), for the audit report.
    fn diff(&self, b: &Rows) -> String {
        let a = self;
        let mut what = Vec::new();
        if a.samples != b.samples {
            what.push("samples");
        }
        if a.net != b.net {
            what.push("sample_net");
        }
        if a.disk != b.disk {
            what.push("sample_disk");
        }
        if a.sockets != b.sockets {
            what.push("socket_changes");
        }
        what.join(", ")
    }
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

    fn put(store: &mut Store, key: &SigningKey, bytes: &[u8]) -> bool {
        let id = DeviceId::of(&key.verifying_key()).to_string();
        let num = store.find_device(&id).unwrap().num;
        let v = SignedFrame::parse(bytes)
            .unwrap()
            .verify(&key.verifying_key())
            .unwrap();
        let body = v.body().unwrap();
        let tx = store.transaction().unwrap();
        let fresh = store_frame(&tx, num, &v, Some(&body), &Layout::default(), 0).unwrap();
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

        // A minute rolled up in two passes: counts add, the mean is of all.
        assert!(put(&mut store, &key, &frame_with(&key, 2, 120_000, 500)));
        assert!(put(&mut store, &key, &frame_with(&key, 3, 130_000, 800)));
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
    }
}
