//! The access record: every session the agents report (who, from where,
//! when, how long, as what), kept with the alerts it raised, and checked
//! against the access policy — the configured rules (users, source
//! prefixes, weekly windows in local time) and the windows opened with
//! `vigil-collector access open`. Rules: a session outside the policy
//! (`access.outside-policy`), any root session (`access.root-session`), a
//! session still open when its window ended (`access.overstay`), login
//! records that vanished on the device (`access.log-tampered`).
//! Decides; never writes SQL: the record itself is kept by
//! `store::access`.

use std::net::IpAddr;

use jiff::tz::TimeZone;
use serde_json::{json, Value};
use vigil_protocol::body::{Addr, Session, SessionEvent, SessionKind, Sessions};

use crate::alert::{self, Raise};
use crate::config::{AccessGrant, ConfigError, Window};
use crate::store::access::{self as db, Opened};
use crate::store::{StoreError, Tx};

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

/// How much earlier than a window's opening a session may be dated and
/// still be judged inside it. A session's start is the device's word, sent
/// to the whole second (the agent rounds an estimate good to about 20 ms
/// on the live system, to 1 s from a copied /proc), on a clock that may be
/// off by a little: a vendor who logs in just after a window opens must
/// not be judged outside it. Only the start is eased; ends are not.
pub const START_TOLERANCE_MS: u64 = 2_000;

/// A new session judged at its start, with `START_TOLERANCE_MS`.
pub fn judge_start(
    policy: &Policy,
    opened: &[Opened],
    target: &Target<'_>,
    s: &Session,
    started_ms: u64,
) -> Verdict {
    let v = evaluate(policy, opened, target, s, started_ms);
    if v.allowed {
        return v;
    }
    let later = evaluate(
        policy,
        opened,
        target,
        s,
        started_ms.saturating_add(START_TOLERANCE_MS),
    );
    if later.allowed {
        later
    } else {
        v
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
    tx: &Tx,
    device: &str,
    from_ms: u64,
    until_ms: u64,
    reason: &str,
    actor: &str,
) -> Result<i64, StoreError> {
    let id = db::insert_window(tx, device, from_ms, until_ms, reason, actor)?;
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
/// returns how many. Sessions the windows allowed are judged again at the
/// next overstay pass: still open and allowed by nothing else, they
/// overstay.
pub fn close_windows(tx: &Tx, device: &str, actor: &str, now_ms: u64) -> Result<usize, StoreError> {
    let n = db::end_windows(tx, device, now_ms)?;
    db::cut_allowed(tx, device, now_ms)?;
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

/// What the writer needs to raise an alert and learn its id.
pub type RaiseFn<'a> = dyn FnMut(&Tx, Raise) -> Result<i64, StoreError> + 'a;

/// Stores the sessions of one frame and raises what they call for.
#[allow(clippy::too_many_arguments)]
pub fn ingest(
    tx: &Tx,
    policy: &Policy,
    device: &str,
    boot: u32,
    seq: u64,
    body: &Sessions,
    received_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), StoreError> {
    let (name, model) = db::name_and_model(tx, device)?;
    let windows = db::windows(tx, device)?;
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
                let ended_ms = ended_s
                    .saturating_mul(1000)
                    .max(session.started_s.saturating_mul(1000));
                db::close_session(tx, device, session.key, ended_ms, seq)?;
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
        db::end_unseen(tx, device, boot, received_ms)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn opened(
    tx: &Tx,
    policy: &Policy,
    windows: &[Opened],
    t: &Target<'_>,
    boot: u32,
    seq: u64,
    s: &Session,
    received_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), StoreError> {
    let device = t.id;
    if db::seen_again(tx, device, s.key, boot)? {
        // Reported again (a snapshot after an agent restart): still open.
        return Ok(());
    }
    let started_ms = s.started_s.saturating_mul(1000);
    let v = judge_start(policy, windows, t, s, started_ms);
    let parent_user = match s.parent {
        Some(p) => db::session_user(tx, device, p)?,
        None => None,
    };
    db::insert_session(
        tx,
        &db::Opening {
            device,
            session: s,
            remote: s.remote.map(|r| ip(&r.addr)),
            boot,
            seq,
            received_ms,
            allowed: v.allowed,
            violations: &v.violations,
            allowed_until_ms: v.until_ms,
        },
    )?;
    let mut ev = describe(s);
    ev["frame"] = json!({"boot": boot, "seq": seq});
    if let Some(p) = &parent_user {
        ev["started_from"] = json!({"key": s.parent.map(|k| format!("{k:016x}")), "user": p});
    }
    let network = match &s.remote {
        Some(r) => db::network_alerts(tx, device, ip(&r.addr))?,
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
        db::add_alert(tx, device, s.key, *id)?;
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
        db::add_alert(tx, device, s.key, id)?;
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
        db::add_alert(tx, device, s.key, id)?;
    }
    Ok(())
}

/// Links an Internet-inbound alert about `peer` to the open sessions from
/// that address (when the socket table reports the peer after the session).
pub fn link_network(tx: &Tx, device: &str, peer: &str, alert_id: i64) -> Result<(), StoreError> {
    let Ok(addr) = peer.parse::<IpAddr>() else {
        return Ok(());
    };
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    for k in db::open_from(tx, device, addr)? {
        db::add_alert(tx, device, k, alert_id)?;
        // The session's own alert names the network alert too.
        db::cite_network_alert(
            tx,
            device,
            k,
            alert_id,
            [alert::ACCESS_OUTSIDE_POLICY.id, alert::ACCESS_ROOT.id],
        )?;
    }
    Ok(())
}

/// Open sessions whose allowing window has ended: re-checked now (a new
/// window may have been opened), else an overstay alert, once.
pub fn overstays(
    tx: &Tx,
    policy: &Policy,
    now_ms: u64,
    raise: &mut RaiseFn<'_>,
) -> Result<(), StoreError> {
    for d in db::due(tx, now_ms)? {
        let (name, model) = db::name_and_model(tx, &d.device)?;
        let windows = db::windows(tx, &d.device)?;
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
            db::extend(tx, &d.device, d.key, v.until_ms)?;
            continue;
        }
        db::mark_overstay(tx, &d.device, d.key)?;
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
        db::add_alert(tx, &d.device, d.key as u64, id)?;
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
    fn a_session_dated_just_before_its_window_opened_is_inside_it() {
        let p = policy(vec![vendor_rule()]);
        let w = Opened {
            id: 4,
            device: "dev1".into(),
            from_ms: at(19, 0),
            until_ms: at(21, 0),
            reason: "ticket 43".into(),
            actor: "alice".into(),
            closed_ms: None,
        };
        let s = session("vendor", [10, 20, 0, 5]);
        let w = std::slice::from_ref(&w);
        // 1.5 s before the opening: strictly outside, inside with the tolerance.
        let early = at(19, 0) - 1_500;
        assert!(!evaluate(&p, w, &T, &s, early).allowed);
        let v = judge_start(&p, w, &T, &s, early);
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.until_ms, Some(at(21, 0)));
        // Beyond the tolerance: outside.
        let v = judge_start(&p, w, &T, &s, at(19, 0) - START_TOLERANCE_MS - 500);
        assert!(!v.allowed, "{v:?}");
        // The tolerance eases only the start: a wrong source stays wrong.
        let v = judge_start(&p, w, &T, &session("vendor", [203, 0, 113, 7]), early);
        assert!(!v.allowed);
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
