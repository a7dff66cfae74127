//! The access record's tables: sessions as the agents reported them, with
//! their verdicts and the alerts they raised, and the access windows
//! opened by hand. Only SQL lives here; what a session is allowed to do is
//! decided in `crate::access`, which calls these with plain values.

use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use vigil_protocol::body::Session;

use super::{i, u, Result};
use crate::alert;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions(
  device TEXT NOT NULL, key INTEGER NOT NULL,
  kind TEXT NOT NULL, user TEXT NOT NULL, uid INTEGER, terminal TEXT NOT NULL,
  remote TEXT, remote_port INTEGER, process TEXT NOT NULL, pid INTEGER NOT NULL,
  command TEXT NOT NULL, parent INTEGER, by_user TEXT NOT NULL,
  started_ms INTEGER NOT NULL, ended_ms INTEGER, end_note TEXT NOT NULL DEFAULT '',
  source TEXT NOT NULL, boot INTEGER NOT NULL, open_seq INTEGER NOT NULL, close_seq INTEGER,
  reported_ms INTEGER NOT NULL,
  verdict TEXT NOT NULL, violations TEXT NOT NULL, allowed_until_ms INTEGER,
  overstay INTEGER NOT NULL DEFAULT 0, alerts TEXT NOT NULL DEFAULT '[]',
  PRIMARY KEY(device, key));
CREATE INDEX IF NOT EXISTS sessions_open ON sessions(device) WHERE ended_ms IS NULL;
CREATE INDEX IF NOT EXISTS sessions_due ON sessions(allowed_until_ms) WHERE ended_ms IS NULL AND overstay = 0;
CREATE TABLE IF NOT EXISTS access_windows(
  id INTEGER PRIMARY KEY, device TEXT NOT NULL,
  from_ms INTEGER NOT NULL, until_ms INTEGER NOT NULL,
  reason TEXT NOT NULL, actor TEXT NOT NULL, closed_ms INTEGER);
";

/// A window opened by hand for one device.
#[derive(Debug, Clone)]
pub struct Opened {
    pub id: i64,
    pub device: String,
    pub from_ms: u64,
    pub until_ms: u64,
    pub reason: String,
    pub actor: String,
    pub closed_ms: Option<u64>,
}

/// Records a window for `device`; returns its id.
pub fn insert_window(
    tx: &Connection,
    device: &str,
    from_ms: u64,
    until_ms: u64,
    reason: &str,
    actor: &str,
) -> Result<i64> {
    tx.execute(
        "INSERT INTO access_windows(device, from_ms, until_ms, reason, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device, i(from_ms), i(until_ms), reason, actor],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Ends every window of `device` still open at `now_ms`; returns how many.
pub fn end_windows(tx: &Connection, device: &str, now_ms: u64) -> Result<usize> {
    Ok(tx.execute(
        "UPDATE access_windows SET closed_ms = ?2 WHERE device = ?1 AND closed_ms IS NULL AND until_ms > ?2",
        params![device, i(now_ms)],
    )?)
}

/// Open sessions of `device` allowed past `now_ms` are allowed only until
/// now (their window was closed by hand): the overstay check judges them
/// again on its next pass. Returns how many.
pub fn cut_allowed(tx: &Connection, device: &str, now_ms: u64) -> Result<usize> {
    Ok(tx
        .prepare_cached(
            "UPDATE sessions SET allowed_until_ms = ?2
             WHERE device = ?1 AND ended_ms IS NULL AND overstay = 0 AND allowed_until_ms > ?2",
        )?
        .execute(params![device, i(now_ms)])?)
}

/// Every window of `device` (all devices: empty), oldest first.
pub fn windows(tx: &Connection, device: &str) -> Result<Vec<Opened>> {
    let mut st = tx.prepare_cached(
        "SELECT id, device, from_ms, until_ms, reason, actor, closed_ms FROM access_windows
         WHERE device = ?1 OR ?1 = '' ORDER BY id",
    )?;
    let rows = st.query_map([device], |r| {
        Ok(Opened {
            id: r.get(0)?,
            device: r.get(1)?,
            from_ms: u(r.get(2)?),
            until_ms: u(r.get(3)?),
            reason: r.get(4)?,
            actor: r.get(5)?,
            closed_ms: r.get::<_, Option<i64>>(6)?.map(u),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The device's name and model (empty when it is not enrolled).
pub fn name_and_model(tx: &Connection, device: &str) -> Result<(String, String)> {
    Ok(tx
        .prepare_cached("SELECT name, model FROM devices WHERE id = ?1")?
        .query_row([device], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default())
}

/// Open Internet-inbound alerts of the device about `addr` (the same peer
/// seen in the socket table).
pub fn network_alerts(tx: &Connection, device: &str, addr: IpAddr) -> Result<Vec<i64>> {
    let mapped = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_string(),
        IpAddr::V6(v6) => v6.to_string(),
    };
    let mut st = tx.prepare_cached(
        "SELECT id FROM alerts WHERE device = ?1 AND rule = ?2 AND state != 'resolved'
           AND (dedup = ?3 OR dedup = ?4) ORDER BY id",
    )?;
    let rows = st.query_map(
        params![device, alert::INTERNET_INBOUND.id, addr.to_string(), mapped],
        |r| r.get(0),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Adds alert `id` to the session's list of alerts, once.
pub fn add_alert(tx: &Connection, device: &str, key: u64, id: i64) -> Result<()> {
    let list: Option<String> = tx
        .prepare_cached("SELECT alerts FROM sessions WHERE device = ?1 AND key = ?2")?
        .query_row(params![device, key as i64], |r| r.get(0))
        .optional()?;
    let mut ids: Vec<i64> = list
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
    if !ids.contains(&id) {
        ids.push(id);
        tx.prepare_cached("UPDATE sessions SET alerts = ?3 WHERE device = ?1 AND key = ?2")?
            .execute(params![device, key as i64, json!(ids).to_string()])?;
    }
    Ok(())
}

/// A session reported again (a snapshot after an agent restart): notes the
/// boot it was seen in and says `true`; `false` if it is new.
pub fn seen_again(tx: &Connection, device: &str, key: u64, boot: u32) -> Result<bool> {
    let known: Option<i64> = tx
        .prepare_cached("SELECT boot FROM sessions WHERE device = ?1 AND key = ?2")?
        .query_row(params![device, key as i64], |r| r.get(0))
        .optional()?;
    if known.is_some() {
        tx.prepare_cached("UPDATE sessions SET boot = ?3 WHERE device = ?1 AND key = ?2")?
            .execute(params![device, key as i64, i64::from(boot)])?;
    }
    Ok(known.is_some())
}

/// The user of session `key`, if it is recorded.
pub fn session_user(tx: &Connection, device: &str, key: u64) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached("SELECT user FROM sessions WHERE device = ?1 AND key = ?2")?
        .query_row(params![device, key as i64], |r| r.get(0))
        .optional()?)
}

/// A new session, as reported, with the policy's verdict on it.
pub struct Opening<'a> {
    pub device: &'a str,
    pub session: &'a Session,
    /// The remote address as the record shows it (IPv4-mapped as IPv4).
    pub remote: Option<IpAddr>,
    pub boot: u32,
    pub seq: u64,
    pub received_ms: u64,
    pub allowed: bool,
    pub violations: &'a [String],
    pub allowed_until_ms: Option<u64>,
}

pub fn insert_session(tx: &Connection, o: &Opening<'_>) -> Result<()> {
    let s = o.session;
    tx.prepare_cached(
        "INSERT INTO sessions(device, key, kind, user, uid, terminal, remote, remote_port, process, pid,
                              command, parent, by_user, started_ms, source, boot, open_seq, reported_ms,
                              verdict, violations, allowed_until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?
    .execute(params![
        o.device,
        s.key as i64,
        s.kind.name(),
        s.user.as_str(),
        s.uid,
        s.terminal.as_str(),
        o.remote.map(|a| a.to_string()),
        s.remote.map(|r| r.port).filter(|&p| p != 0),
        s.process.as_str(),
        s.pid,
        s.command.as_str(),
        s.parent.map(|p| p as i64),
        s.by_user.as_str(),
        i(s.started_s.saturating_mul(1000)),
        s.source.name(),
        i64::from(o.boot),
        i(o.seq),
        i(o.received_ms),
        if o.allowed { "allowed" } else { "outside-policy" },
        json!(o.violations).to_string(),
        o.allowed_until_ms.map(i),
    ])?;
    Ok(())
}

/// Session `key` ended at `ended_ms`, told in frame `seq` (a later report
/// replaces an end that was only inferred).
pub fn close_session(
    tx: &Connection,
    device: &str,
    key: u64,
    ended_ms: u64,
    seq: u64,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE sessions SET ended_ms = ?3, close_seq = ?4, end_note = ''
         WHERE device = ?1 AND key = ?2 AND (ended_ms IS NULL OR end_note != '')",
    )?
    .execute(params![device, key as i64, i(ended_ms), i(seq)])?;
    Ok(())
}

/// Sessions of earlier boots still open when a full snapshot of `boot`
/// did not name them: they ended while no agent was watching.
pub fn end_unseen(tx: &Connection, device: &str, boot: u32, at_ms: u64) -> Result<()> {
    tx.prepare_cached(
        "UPDATE sessions SET ended_ms = ?3,
                end_note = 'ended while the agent was not running (at or before this time)'
         WHERE device = ?1 AND ended_ms IS NULL AND boot < ?2",
    )?
    .execute(params![device, i64::from(boot), i(at_ms)])?;
    Ok(())
}

/// Keys of the device's open sessions from `addr`.
pub fn open_from(tx: &Connection, device: &str, addr: IpAddr) -> Result<Vec<u64>> {
    let mut st = tx.prepare_cached(
        "SELECT key FROM sessions WHERE device = ?1 AND remote = ?2 AND ended_ms IS NULL",
    )?;
    let rows = st.query_map(params![device, addr.to_string()], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|k| k.map(|k| k as u64))
        .collect::<rusqlite::Result<_>>()?)
}

/// The session's own open access alerts (`rules`) name network alert
/// `alert_id` in their evidence, once.
pub fn cite_network_alert(
    tx: &Connection,
    device: &str,
    key: u64,
    alert_id: i64,
    rules: [&str; 2],
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE alerts SET evidence = json_set(evidence, '$.network_alerts',
                json(CASE WHEN json_extract(evidence, '$.network_alerts') IS NULL THEN json_array(?3)
                     ELSE json_insert(json_extract(evidence, '$.network_alerts'), '$[#]', ?3) END))
         WHERE device = ?1 AND dedup = ?2 AND rule IN (?4, ?5) AND state != 'resolved'
           AND NOT EXISTS (SELECT 1 FROM json_each(json_extract(evidence, '$.network_alerts')) WHERE value = ?3)",
    )?
    .execute(params![device, format!("{key:016x}"), alert_id, rules[0], rules[1]])?;
    Ok(())
}

/// An open session whose allowing window has ended by now.
pub struct Due {
    pub device: String,
    pub key: i64,
    pub user: String,
    pub kind: String,
    pub terminal: String,
    pub remote: Option<String>,
    pub started_ms: u64,
    pub until_ms: u64,
    pub by_user: String,
}

/// Open sessions not yet called overstaying whose window ended by `now_ms`.
pub fn due(tx: &Connection, now_ms: u64) -> Result<Vec<Due>> {
    let mut st = tx.prepare_cached(
        "SELECT device, key, user, kind, terminal, remote, started_ms, allowed_until_ms, by_user FROM sessions
         WHERE ended_ms IS NULL AND overstay = 0 AND allowed_until_ms <= ?1",
    )?;
    let rows = st.query_map([i(now_ms)], |r| {
        Ok(Due {
            device: r.get(0)?,
            key: r.get(1)?,
            user: r.get(2)?,
            kind: r.get(3)?,
            terminal: r.get(4)?,
            remote: r.get(5)?,
            started_ms: u(r.get(6)?),
            until_ms: u(r.get(7)?),
            by_user: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A due session is allowed again, until `until_ms` (`None`: no end).
pub fn extend(tx: &Connection, device: &str, key: i64, until_ms: Option<u64>) -> Result<()> {
    tx.prepare_cached("UPDATE sessions SET allowed_until_ms = ?3 WHERE device = ?1 AND key = ?2")?
        .execute(params![device, key, until_ms.map(i)])?;
    Ok(())
}

/// A due session overstayed (alerted once).
pub fn mark_overstay(tx: &Connection, device: &str, key: i64) -> Result<()> {
    tx.prepare_cached("UPDATE sessions SET overstay = 1 WHERE device = ?1 AND key = ?2")?
        .execute(params![device, key])?;
    Ok(())
}

/// One row of the access record.
#[derive(Debug, Clone)]
pub struct Row {
    pub device: String,
    pub device_name: String,
    pub key: u64,
    pub kind: String,
    pub user: String,
    pub uid: Option<i64>,
    pub terminal: String,
    pub remote: Option<String>,
    pub remote_port: Option<i64>,
    pub process: String,
    pub command: String,
    pub by_user: String,
    pub parent: Option<u64>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub end_note: String,
    pub source: String,
    pub verdict: String,
    pub violations: Vec<String>,
    pub allowed_until_ms: Option<u64>,
    pub overstay: bool,
    pub alerts: Vec<i64>,
    pub boot: i64,
    pub open_seq: u64,
    pub close_seq: Option<u64>,
}

impl Row {
    pub fn to_json(&self, now_ms: u64) -> Value {
        json!({
            "device": self.device, "device_name": self.device_name,
            "session": format!("{:016x}", self.key),
            "kind": self.kind, "user": self.user, "uid": self.uid,
            "by_user": if self.by_user.is_empty() { Value::Null } else { json!(self.by_user) },
            "started_from": self.parent.map(|p| format!("{p:016x}")),
            "remote": self.remote, "remote_port": self.remote_port,
            "terminal": self.terminal, "process": self.process,
            "command": if self.command.is_empty() { Value::Null } else { json!(self.command) },
            "started": alert::rfc3339(self.started_ms),
            "ended": self.ended_ms.map(alert::rfc3339),
            "end_note": if self.end_note.is_empty() { Value::Null } else { json!(self.end_note) },
            "open": self.ended_ms.is_none(),
            "duration_s": self.ended_ms.unwrap_or(now_ms).saturating_sub(self.started_ms) / 1000,
            "verdict": self.verdict, "violations": self.violations,
            "allowed_until": self.allowed_until_ms.map(alert::rfc3339),
            "overstay": self.overstay,
            "alerts": self.alerts,
            "source": self.source,
            "signed_frames": {"boot": self.boot, "opened_seq": self.open_seq, "closed_seq": self.close_seq},
        })
    }
}

/// The record for one device (or all: `None`), sessions that overlap
/// `[from, to)`, oldest first.
pub fn record(
    conn: &Connection,
    device: Option<&str>,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<Row>> {
    let mut st = conn.prepare(
        "SELECT s.device, coalesce(d.name, ''), s.key, s.kind, s.user, s.uid, s.terminal, s.remote, s.remote_port,
                s.process, s.command, s.by_user, s.parent, s.started_ms, s.ended_ms, s.end_note, s.source,
                s.verdict, s.violations, s.allowed_until_ms, s.overstay, s.alerts, s.boot, s.open_seq, s.close_seq
         FROM sessions s LEFT JOIN devices d ON d.id = s.device
         WHERE (?1 IS NULL OR s.device = ?1) AND s.started_ms < ?3 AND (s.ended_ms IS NULL OR s.ended_ms >= ?2)
         ORDER BY s.started_ms, s.parent IS NOT NULL, s.device, s.key",
    )?;
    let rows = st.query_map(params![device, i(from_ms), i(to_ms)], |r| {
        Ok(Row {
            device: r.get(0)?,
            device_name: r.get(1)?,
            key: r.get::<_, i64>(2)? as u64,
            kind: r.get(3)?,
            user: r.get(4)?,
            uid: r.get(5)?,
            terminal: r.get(6)?,
            remote: r.get(7)?,
            remote_port: r.get(8)?,
            process: r.get(9)?,
            command: r.get(10)?,
            by_user: r.get(11)?,
            parent: r.get::<_, Option<i64>>(12)?.map(|p| p as u64),
            started_ms: u(r.get(13)?),
            ended_ms: r.get::<_, Option<i64>>(14)?.map(u),
            end_note: r.get(15)?,
            source: r.get(16)?,
            verdict: r.get(17)?,
            violations: serde_json::from_str(&r.get::<_, String>(18)?).unwrap_or_default(),
            allowed_until_ms: r.get::<_, Option<i64>>(19)?.map(u),
            overstay: r.get::<_, i64>(20)? != 0,
            alerts: serde_json::from_str(&r.get::<_, String>(21)?).unwrap_or_default(),
            boot: r.get(22)?,
            open_seq: u(r.get(23)?),
            close_seq: r.get::<_, Option<i64>>(24)?.map(u),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
