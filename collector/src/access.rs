//! The access record: every session the agents report (who, from where,
//! when, how long, as what), kept with the alerts it raised, and checked
//! against the access policy — the configured rules (users, source
//! prefixes, weekly windows in local time) and the windows opened with
//! `vigil-collector access open`. Rules: a session outside the policy
//! (`access.outside-policy`), any root session (`access.root-session`), a
//! session still open when its window ended (`access.overstay`), login
//! records that vanished on the device (`access.log-tampered`).

use std::net::IpAddr;

use jiff::tz::TimeZone;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use vigil_protocol::body::{Addr, Session, SessionEvent, SessionKind, Sessions};

use crate::alert::{self, Raise};
use crate::config::{AccessGrant, ConfigError, Window};
use crate::store::{i, u};

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

/// The policy as the writer applies it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub grants: Vec<AccessGrant>,
    pub tz: TimeZone,
    pub tz_name: String,
}

impl Policy {
    pub fn new(cfg: &crate::config::Access) -> Result<Policy, ConfigError> {
        let (tz, tz_name) = match &cfg.timezone {
            // Without the zone database too.
            Some(name) if name.eq_ignore_ascii_case("UTC") => (TimeZone::UTC, "UTC".into()),
            Some(name) => (
                TimeZone::get(name).map_err(|e| ConfigError::Invalid {
                    field: "access.timezone",
                    message: format!("`{name}`: {e}"),
                })?,
                name.clone(),
            ),
            None => {
                let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
                let name = tz.iana_name().unwrap_or("local").to_string();
                (tz, name)
            }
        };
        Ok(Policy {
            grants: cfg.grants()?,
            tz,
            tz_name,
        })
    }
}

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

/// The device as the policy sees it.
pub struct Target<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub model: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Why not, one line each (from the rule that came closest).
    pub violations: Vec<String>,
    /// When the window that allows it ends (`None`: no end, or not allowed).
    pub until_ms: Option<u64>,
    /// The rule or window that allowed it.
    pub by: String,
}

fn ip(a: &Addr) -> IpAddr {
    match *a {
        Addr::V4(b) => IpAddr::from(b),
        Addr::V6(b) => {
            let v6 = std::net::Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
    }
}

/// The end of the occurrence of `w` that contains `at_ms`, if one does.
fn window_end(w: &Window, tz: &TimeZone, at_ms: u64) -> Option<Option<u64>> {
    if *w == Window::ALWAYS {
        return Some(None);
    }
    let ts = jiff::Timestamp::from_millisecond(i64::try_from(at_ms).ok()?).ok()?;
    let z = ts.to_zoned(tz.clone());
    let day = usize::from(z.weekday().to_monday_zero_offset().unsigned_abs());
    let minute = u16::try_from(i32::from(z.hour()) * 60 + i32::from(z.minute())).ok()?;
    let date = z.date();
    let at = |d: jiff::civil::Date, min: u16| -> Option<u64> {
        let (d, min) = if min >= 1440 {
            (d.tomorrow().ok()?, min - 1440)
        } else {
            (d, min)
        };
        let h = i8::try_from(min / 60).ok()?;
        let m = i8::try_from(min % 60).ok()?;
        let end = d.at(h, m, 0, 0).to_zoned(tz.clone()).ok()?;
        u64::try_from(end.timestamp().as_millisecond()).ok()
    };
    let today = *w.days.get(day)?;
    let yesterday = *w.days.get((day + 6) % 7)?;
    if w.start_min < w.end_min {
        (today && (w.start_min..w.end_min).contains(&minute)).then(|| at(date, w.end_min))
    } else if today && minute >= w.start_min {
        Some(at(date, w.end_min + 1440))
    } else if yesterday && minute < w.end_min {
        Some(at(date, w.end_min))
    } else {
        None
    }
}

/// Checks one session at `at_ms` against the rules covering the device and
/// the windows opened for it.
pub fn evaluate(
    policy: &Policy,
    opened: &[Opened],
    target: &Target<'_>,
    s: &Session,
    at_ms: u64,
) -> Verdict {
    let covering: Vec<&AccessGrant> = policy
        .grants
        .iter()
        .filter(|g| {
            g.device
                .as_deref()
                .is_some_and(|d| d == target.id || d == target.name)
                || g.model
                    .as_deref()
                    .is_some_and(|m| !target.model.is_empty() && m == target.model)
        })
        .collect();
    let by_hand: Vec<&Opened> = opened
        .iter()
        .filter(|o| {
            o.device == target.id
                && o.from_ms <= at_ms
                && at_ms < o.closed_ms.unwrap_or(o.until_ms).min(o.until_ms)
        })
        .collect();
    let hand_until = by_hand.iter().map(|o| o.until_ms).max();
    let hand_note =
        |o: &Opened| format!("access window {} opened by {}: {}", o.id, o.actor, o.reason);
    // Without a rule, an opened window allows anyone from anywhere.
    if covering.is_empty() {
        return match by_hand.first() {
            Some(o) => Verdict {
                allowed: true,
                violations: Vec::new(),
                until_ms: hand_until,
                by: hand_note(o),
            },
            None => Verdict {
                allowed: false,
                violations: vec![
                    "no access policy covers this device and no access window is open".into(),
                ],
                until_ms: None,
                by: String::new(),
            },
        };
    }
    let mut best: Option<Verdict> = None;
    for g in covering {
        let mut v = Vec::new();
        // A privileged session is judged by who started it.
        let login_user = if s.kind == SessionKind::Privileged {
            s.by_user.as_str()
        } else {
            s.user.as_str()
        };
        if !g.users.is_empty() && !g.users.iter().any(|u| u == login_user) {
            v.push(format!(
                "user `{login_user}` is not one of the allowed users ({})",
                g.users.join(", ")
            ));
        }
        if s.kind == SessionKind::Remote && !g.sources.is_empty() {
            match &s.remote {
                Some(r) => {
                    let a = ip(&r.addr);
                    if !g.sources.iter().any(|p| p.contains(a)) {
                        v.push(format!(
                            "source {a} is not in the allowed sources ({})",
                            g.sources
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                None => v.push("the session's source address is unknown".into()),
            }
        }
        let scheduled = g
            .windows
            .iter()
            .filter_map(|w| window_end(w, &policy.tz, at_ms))
            .fold(None, |acc: Option<Option<u64>>, end| match (acc, end) {
                (None, e) => Some(e),
                (Some(None), _) | (_, None) => Some(None),
                (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
            });
        let until = match (scheduled, hand_until) {
            (Some(None), _) => Some(None),
            (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
            (Some(Some(a)), None) => Some(Some(a)),
            (None, Some(b)) => Some(Some(b)),
            (None, None) => None,
        };
        if until.is_none() {
            v.push(format!(
                "outside the access windows ({}, time zone {}) and no access window is open",
                if g.windows_text.is_empty() {
                    "none scheduled"
                } else {
                    &g.windows_text
                },
                policy.tz_name
            ));
        }
        let verdict = Verdict {
            allowed: v.is_empty(),
            until_ms: if v.is_empty() { until.flatten() } else { None },
            violations: v,
            by: if scheduled.is_none() && hand_until.is_some() {
                by_hand.first().map(|o| hand_note(o)).unwrap_or_default()
            } else {
                g.text.clone()
            },
        };
        if verdict.allowed {
            return verdict;
        }
        if best
            .as_ref()
            .map_or(true, |b| verdict.violations.len() < b.violations.len())
        {
            best = Some(verdict);
        }
    }
    best.unwrap_or(Verdict {
        allowed: false,
        violations: Vec::new(),
        until_ms: None,
        by: String::new(),
    })
}

/// Opens a window for `device` from `from_ms` to `until_ms`, recorded in
/// the admin log with `reason`; returns its id.
pub fn open_window(
    tx: &Connection,
    device: &str,
    from_ms: u64,
    until_ms: u64,
    reason: &str,
    actor: &str,
) -> Result<i64, crate::store::StoreError> {
    tx.execute(
        "INSERT INTO access_windows(device, from_ms, until_ms, reason, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device, i(from_ms), i(until_ms), reason, actor],
    )?;
    let id = tx.last_insert_rowid();
    crate::store::admin(
        tx,
        actor,
        "access-open",
        device,
        json!({"window": id, "from": alert::rfc3339(from_ms), "until": alert::rfc3339(until_ms), "reason": reason}),
        from_ms,
    )?;
    Ok(id)
}

/// Ends every window of `device` still open at `now_ms` (admin-logged);
/// returns how many.
pub fn close_windows(
    tx: &Connection,
    device: &str,
    actor: &str,
    now_ms: u64,
) -> Result<usize, crate::store::StoreError> {
    let n = tx.execute(
        "UPDATE access_windows SET closed_ms = ?2 WHERE device = ?1 AND closed_ms IS NULL AND until_ms > ?2",
        params![device, i(now_ms)],
    )?;
    crate::store::admin(
        tx,
        actor,
        "access-close",
        device,
        json!({"windows_closed": n}),
        now_ms,
    )?;
    Ok(n)
}

/// Every window of `device` (all devices: empty), oldest first.
pub fn windows(tx: &Connection, device: &str) -> rusqlite::Result<Vec<Opened>> {
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
    rows.collect()
}

fn target(tx: &Connection, device: &str) -> rusqlite::Result<(String, String)> {
    tx.prepare_cached("SELECT name, model FROM devices WHERE id = ?1")?
        .query_row([device], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map(Option::unwrap_or_default)
}

fn describe(s: &Session) -> Value {
    json!({
        "key": format!("{:016x}", s.key),
        "kind": s.kind.name(),
        "user": s.user.as_str(),
        "uid": s.uid,
        "terminal": s.terminal.as_str(),
        "remote": s.remote.map(|r| ip(&r.addr).to_string()),
        "remote_port": s.remote.map(|r| r.port).filter(|&p| p != 0),
        "process": s.process.as_str(),
        "pid": s.pid,
        "command": s.command.as_str(),
        "by_user": s.by_user.as_str(),
        "started": alert::rfc3339(s.started_s.saturating_mul(1000)),
        "source": s.source.name(),
    })
}

/// Network alerts of the device about `addr` (the same peer seen in the
/// socket table): Internet-inbound and lateral movement.
fn network_alerts(tx: &Connection, device: &str, addr: IpAddr) -> rusqlite::Result<Vec<i64>> {
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
    rows.collect()
}

fn add_alert(tx: &Connection, device: &str, key: u64, id: i64) -> rusqlite::Result<()> {
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

/// What the writer needs to raise an alert and learn its id.
pub type RaiseFn<'a> = dyn FnMut(&Connection, Raise) -> Result<i64, crate::store::StoreError> + 'a;

/// Stores the sessions of one frame and raises what they call for.
#[allow(clippy::too_many_arguments)]
pub fn ingest(
    tx: &Connection,
    policy: &Policy,
    device: &str,
    boot: u32,
    seq: u64,
    body: &Sessions,
    received_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), crate::store::StoreError> {
    let (name, model) = target(tx, device)?;
    let windows = windows(tx, device)?;
    let t = Target {
        id: device,
        name: &name,
        model: &model,
    };
    for e in &body.events {
        match e {
            SessionEvent::Opened(s) => {
                opened(tx, policy, &windows, &t, boot, seq, s, received_ms, raise)?
            }
            SessionEvent::Closed { session, ended_s } => {
                opened(
                    tx,
                    policy,
                    &windows,
                    &t,
                    boot,
                    seq,
                    session,
                    received_ms,
                    raise,
                )?;
                tx.prepare_cached(
                    "UPDATE sessions SET ended_ms = ?3, close_seq = ?4, end_note = ''
                     WHERE device = ?1 AND key = ?2 AND (ended_ms IS NULL OR end_note != '')",
                )?
                .execute(params![
                    device,
                    session.key as i64,
                    i(ended_s
                        .saturating_mul(1000)
                        .max(session.started_s.saturating_mul(1000))),
                    i(seq)
                ])?;
            }
            SessionEvent::LogTampered(l) => {
                let ev = json!({"log": l.path.as_str(), "tampering": l.kind.name(),
                                "bytes_read_before": l.expected_len, "bytes_now": l.actual_len,
                                "boot": boot, "seq": seq,
                                "expected": "login records only ever appended",
                                "seen": format!("{} {} (had {} bytes, now {})", l.path, l.kind.name(), l.expected_len, l.actual_len)});
                raise(
                    tx,
                    Raise::new(
                        alert::ACCESS_LOG_TAMPERED,
                        device,
                        format!("{}/{seq}", l.path),
                        ev,
                        received_ms,
                    ),
                )?;
            }
        }
    }
    if body.snapshot && !body.continued {
        // Every session still open is in this snapshot; the others ended
        // while no agent was watching.
        tx.prepare_cached(
            "UPDATE sessions SET ended_ms = ?3,
                    end_note = 'ended while the agent was not running (at or before this time)'
             WHERE device = ?1 AND ended_ms IS NULL AND boot < ?2",
        )?
        .execute(params![device, i64::from(boot), i(received_ms)])?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn opened(
    tx: &Connection,
    policy: &Policy,
    windows: &[Opened],
    t: &Target<'_>,
    boot: u32,
    seq: u64,
    s: &Session,
    received_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), crate::store::StoreError> {
    let device = t.id;
    let known: Option<i64> = tx
        .prepare_cached("SELECT boot FROM sessions WHERE device = ?1 AND key = ?2")?
        .query_row(params![device, s.key as i64], |r| r.get(0))
        .optional()?;
    if known.is_some() {
        // Reported again (a snapshot after an agent restart): still open.
        tx.prepare_cached("UPDATE sessions SET boot = ?3 WHERE device = ?1 AND key = ?2")?
            .execute(params![device, s.key as i64, i64::from(boot)])?;
        return Ok(());
    }
    let started_ms = s.started_s.saturating_mul(1000);
    let v = evaluate(policy, windows, t, s, started_ms);
    let parent_user: Option<String> = match s.parent {
        Some(p) => tx
            .prepare_cached("SELECT user FROM sessions WHERE device = ?1 AND key = ?2")?
            .query_row(params![device, p as i64], |r| r.get(0))
            .optional()?,
        None => None,
    };
    tx.prepare_cached(
        "INSERT INTO sessions(device, key, kind, user, uid, terminal, remote, remote_port, process, pid,
                              command, parent, by_user, started_ms, source, boot, open_seq, reported_ms,
                              verdict, violations, allowed_until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?
    .execute(params![
        device,
        s.key as i64,
        s.kind.name(),
        s.user.as_str(),
        s.uid,
        s.terminal.as_str(),
        s.remote.map(|r| ip(&r.addr).to_string()),
        s.remote.map(|r| r.port).filter(|&p| p != 0),
        s.process.as_str(),
        s.pid,
        s.command.as_str(),
        s.parent.map(|p| p as i64),
        s.by_user.as_str(),
        i(started_ms),
        s.source.name(),
        i64::from(boot),
        i(seq),
        i(received_ms),
        if v.allowed { "allowed" } else { "outside-policy" },
        json!(v.violations).to_string(),
        v.until_ms.map(i),
    ])?;
    let mut ev = describe(s);
    ev["frame"] = json!({"boot": boot, "seq": seq});
    if let Some(p) = &parent_user {
        ev["started_from"] = json!({"key": s.parent.map(|k| format!("{k:016x}")), "user": p});
    }
    let network = match &s.remote {
        Some(r) => network_alerts(tx, device, ip(&r.addr))?,
        None => Vec::new(),
    };
    if !network.is_empty() {
        ev["network_alerts"] = json!(network);
    }
    let who = if s.kind == SessionKind::Privileged {
        format!("{} ({} as root via {})", s.user, s.by_user, s.process)
    } else {
        s.user.to_string()
    };
    let from = s
        .remote
        .map(|r| format!(" from {}", ip(&r.addr)))
        .unwrap_or_default();
    for id in &network {
        add_alert(tx, device, s.key, *id)?;
    }
    if !v.allowed {
        let mut e = ev.clone();
        e["violations"] = json!(v.violations);
        e["expected"] = json!("a session the access policy allows");
        e["seen"] = json!(format!(
            "{} session of {who}{from} on {}: {}",
            s.kind.name(),
            s.terminal,
            v.violations.join("; ")
        ));
        let id = raise(
            tx,
            Raise::new(
                alert::ACCESS_OUTSIDE_POLICY,
                device,
                format!("{:016x}", s.key),
                e,
                received_ms,
            ),
        )?;
        add_alert(tx, device, s.key, id)?;
    }
    if s.uid == Some(0) || s.kind == SessionKind::Privileged {
        let mut e = ev;
        e["expected"] = json!("root sessions are noted");
        e["seen"] = json!(format!(
            "root {} session: {who}{from} on {}{}",
            s.kind.name(),
            s.terminal,
            if s.command.is_empty() {
                String::new()
            } else {
                format!(" running {}", s.command)
            }
        ));
        let id = raise(
            tx,
            Raise::new(
                alert::ACCESS_ROOT,
                device,
                format!("{:016x}", s.key),
                e,
                received_ms,
            ),
        )?;
        add_alert(tx, device, s.key, id)?;
    }
    Ok(())
}

/// Links an Internet-inbound alert about `peer` to the open sessions from
/// that address (when the socket table reports the peer after the session).
pub fn link_network(
    tx: &Connection,
    device: &str,
    peer: &str,
    alert_id: i64,
) -> rusqlite::Result<()> {
    let Ok(addr) = peer.parse::<IpAddr>() else {
        return Ok(());
    };
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    let keys: Vec<i64> = {
        let mut st = tx.prepare_cached(
            "SELECT key FROM sessions WHERE device = ?1 AND remote = ?2 AND ended_ms IS NULL",
        )?;
        let rows = st.query_map(params![device, addr.to_string()], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for k in keys {
        add_alert(tx, device, k as u64, alert_id)?;
        // The session's own alert names the network alert too.
        tx.prepare_cached(
            "UPDATE alerts SET evidence = json_set(evidence, '$.network_alerts',
                    json(CASE WHEN json_extract(evidence, '$.network_alerts') IS NULL THEN json_array(?3)
                         ELSE json_insert(json_extract(evidence, '$.network_alerts'), '$[#]', ?3) END))
             WHERE device = ?1 AND dedup = ?2 AND rule IN (?4, ?5) AND state != 'resolved'
               AND NOT EXISTS (SELECT 1 FROM json_each(json_extract(evidence, '$.network_alerts')) WHERE value = ?3)",
        )?
        .execute(params![
            device,
            format!("{:016x}", k as u64),
            alert_id,
            alert::ACCESS_OUTSIDE_POLICY.id,
            alert::ACCESS_ROOT.id
        ])?;
    }
    Ok(())
}

/// Open sessions whose allowing window has ended: re-checked now (a new
/// window may have been opened), else an overstay alert, once.
pub fn overstays(
    tx: &Connection,
    policy: &Policy,
    now_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), crate::store::StoreError> {
    struct Due {
        device: String,
        key: i64,
        user: String,
        kind: String,
        terminal: String,
        remote: Option<String>,
        started_ms: u64,
        until_ms: u64,
        by_user: String,
    }
    let due: Vec<Due> = {
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
        rows.collect::<rusqlite::Result<_>>()?
    };
    for d in due {
        let (name, model) = target(tx, &d.device)?;
        let windows = windows(tx, &d.device)?;
        let t = Target {
            id: &d.device,
            name: &name,
            model: &model,
        };
        // Judge "now" with the session as it was reported.
        let probe = Session {
            key: d.key as u64,
            kind: match d.kind.as_str() {
                "privileged" => SessionKind::Privileged,
                "console" => SessionKind::Console,
                _ => SessionKind::Remote,
            },
            user: hstr(&d.user),
            uid: None,
            terminal: hstr(&d.terminal),
            remote: d
                .remote
                .as_deref()
                .and_then(|r| r.parse::<IpAddr>().ok())
                .map(|a| vigil_protocol::body::Endpoint {
                    addr: match a {
                        IpAddr::V4(v4) => Addr::V4(v4.octets()),
                        IpAddr::V6(v6) => Addr::V6(v6.octets()),
                    },
                    port: 0,
                }),
            process: hstr(""),
            pid: 0,
            command: hstr(""),
            parent: None,
            by_user: hstr(&d.by_user),
            started_s: d.started_ms / 1000,
            source: vigil_protocol::body::SessionSource::Processes,
        };
        let v = evaluate(policy, &windows, &t, &probe, now_ms);
        if v.allowed && v.until_ms.map_or(true, |u| u > now_ms) {
            tx.prepare_cached(
                "UPDATE sessions SET allowed_until_ms = ?3 WHERE device = ?1 AND key = ?2",
            )?
            .execute(params![d.device, d.key, v.until_ms.map(i)])?;
            continue;
        }
        tx.prepare_cached("UPDATE sessions SET overstay = 1 WHERE device = ?1 AND key = ?2")?
            .execute(params![d.device, d.key])?;
        let ev = json!({"key": format!("{:016x}", d.key as u64), "user": d.user, "kind": d.kind,
                        "terminal": d.terminal, "remote": d.remote,
                        "started": alert::rfc3339(d.started_ms), "window_ended": alert::rfc3339(d.until_ms),
                        "expected": "sessions end within their access window",
                        "seen": format!("{} session of {} still open {} s after its window ended",
                                        d.kind, d.user, now_ms.saturating_sub(d.until_ms) / 1000)});
        let id = raise(
            tx,
            Raise::new(
                alert::ACCESS_OVERSTAY,
                d.device.clone(),
                format!("{:016x}", d.key as u64),
                ev,
                now_ms,
            ),
        )?;
        add_alert(tx, &d.device, d.key as u64, id)?;
    }
    Ok(())
}

fn hstr<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
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
) -> rusqlite::Result<Vec<Row>> {
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
    rows.collect()
}

/// `2h`, `90m`, `45s`, `1d`, `1h30m` -> milliseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (num.is_empty() && total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Access, AccessRule};
    use vigil_protocol::body::{Endpoint, SessionSource};

    fn policy(rules: Vec<AccessRule>) -> Policy {
        Policy::new(&Access {
            timezone: Some("UTC".into()),
            policy: rules,
        })
        .expect("valid")
    }

    fn vendor_rule() -> AccessRule {
        AccessRule {
            model: Some("CT-9".into()),
            users: vec!["vendor".into()],
            sources: vec!["10.20.0.0/24".into()],
            windows: vec!["Mon-Fri 09:00-17:00".into()],
            ..AccessRule::default()
        }
    }

    fn session(user: &str, from: [u8; 4]) -> Session {
        Session {
            key: 1,
            kind: SessionKind::Remote,
            user: hstr(user),
            uid: Some(1000),
            terminal: hstr("pts/0"),
            remote: Some(Endpoint {
                addr: Addr::V4(from),
                port: 40000,
            }),
            process: hstr("sshd"),
            pid: 10,
            command: hstr(""),
            parent: None,
            by_user: hstr(""),
            started_s: 0,
            source: SessionSource::Processes,
        }
    }

    /// 2026-12-01 is a Tuesday.
    fn at(h: u32, m: u32) -> u64 {
        alert::parse_rfc3339("2026-12-01").expect("date") + u64::from(h * 3600 + m * 60) * 1000
    }

    const T: Target<'static> = Target {
        id: "dev1",
        name: "ct-1",
        model: "CT-9",
    };

    #[test]
    fn a_session_inside_the_rule_is_allowed_until_the_window_ends() {
        let p = policy(vec![vendor_rule()]);
        let v = evaluate(&p, &[], &T, &session("vendor", [10, 20, 0, 5]), at(10, 0));
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.until_ms, Some(at(17, 0)));
    }

    #[test]
    fn each_violation_is_named() {
        let p = policy(vec![vendor_rule()]);
        let v = evaluate(&p, &[], &T, &session("root", [203, 0, 113, 7]), at(20, 0));
        assert!(!v.allowed);
        assert_eq!(v.violations.len(), 3, "{:?}", v.violations);
        assert!(v.violations[0].contains("user `root`"));
        assert!(v.violations[1].contains("source 203.0.113.7"));
        assert!(v.violations[2].contains("outside the access windows (Mon-Fri 09:00-17:00"));
        // Saturday: outside the weekday window.
        let sat = at(10, 0) + 4 * 86_400_000;
        assert!(!evaluate(&p, &[], &T, &session("vendor", [10, 20, 0, 5]), sat).allowed);
    }

    #[test]
    fn an_opened_window_allows_time_but_not_other_users_or_sources() {
        let p = policy(vec![vendor_rule()]);
        let w = Opened {
            id: 3,
            device: "dev1".into(),
            from_ms: at(19, 0),
            until_ms: at(21, 0),
            reason: "ticket 42".into(),
            actor: "alice".into(),
            closed_ms: None,
        };
        let ok = evaluate(
            &p,
            std::slice::from_ref(&w),
            &T,
            &session("vendor", [10, 20, 0, 5]),
            at(20, 0),
        );
        assert!(ok.allowed, "{ok:?}");
        assert_eq!(ok.until_ms, Some(at(21, 0)));
        assert!(ok.by.contains("ticket 42"));
        let bad = evaluate(
            &p,
            std::slice::from_ref(&w),
            &T,
            &session("vendor", [203, 0, 113, 7]),
            at(20, 0),
        );
        assert!(!bad.allowed);
        // Closed early: no longer allows.
        let closed = Opened {
            closed_ms: Some(at(19, 30)),
            ..w
        };
        assert!(
            !evaluate(
                &p,
                &[closed],
                &T,
                &session("vendor", [10, 20, 0, 5]),
                at(20, 0)
            )
            .allowed
        );
    }

    #[test]
    fn no_rule_means_no_access_and_windows_past_midnight_end_next_day() {
        let none = policy(Vec::new());
        let v = evaluate(
            &none,
            &[],
            &T,
            &session("vendor", [10, 20, 0, 5]),
            at(10, 0),
        );
        assert!(!v.allowed);
        assert!(v.violations[0].contains("no access policy covers this device"));
        let night = policy(vec![AccessRule {
            device: Some("ct-1".into()),
            windows: vec!["daily 22:00-06:00".into()],
            ..AccessRule::default()
        }]);
        let v = evaluate(&night, &[], &T, &session("x", [1, 1, 1, 1]), at(23, 0));
        assert_eq!(v.until_ms, Some(at(30, 0)), "06:00 the next day");
        let v = evaluate(&night, &[], &T, &session("x", [1, 1, 1, 1]), at(5, 0));
        assert_eq!(v.until_ms, Some(at(6, 0)));
        assert!(!evaluate(&night, &[], &T, &session("x", [1, 1, 1, 1]), at(12, 0)).allowed);
        let always = policy(vec![AccessRule {
            device: Some("dev1".into()),
            windows: vec!["always".into()],
            ..AccessRule::default()
        }]);
        let v = evaluate(&always, &[], &T, &session("x", [1, 1, 1, 1]), at(3, 0));
        assert!(v.allowed && v.until_ms.is_none());
    }

    #[test]
    fn window_and_duration_syntax() {
        assert!(Window::parse("Mon-Fri 09:00-17:00").is_some());
        assert_eq!(
            Window::parse("Fri-Mon 00:00-24:00").map(|w| w.days),
            Some([true, false, false, false, true, true, true])
        );
        for bad in [
            "Mon-Fri",
            "Funday 09:00-10:00",
            "Mon 25:00-26:00",
            "Mon 09:60-10:00",
            "",
        ] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        for bad in ["", "2", "h", "2x", "0s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
