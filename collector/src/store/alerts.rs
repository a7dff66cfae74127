//! Alerts, the event outbox the sinks read, and the admin log.

use super::*;

impl Store {
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
        alert_by_id(&self.conn, id)
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
}

/// One alert by id, as emitted.
fn alert_by_id(tx: &Connection, id: i64) -> rusqlite::Result<Alert> {
    tx.prepare_cached(
        "SELECT a.id, a.device, d.name, a.rule, a.severity, a.first_seen_ms, a.last_seen_ms,
                a.count, a.evidence, a.state
         FROM alerts a LEFT JOIN devices d ON d.id = a.device WHERE a.id = ?1",
    )?
    .query_row([id], alert_row)
}

pub(super) fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
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

pub(super) fn push_event(tx: &Connection, body: &Value, now_ms: u64) -> Result<()> {
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
        let a = alert_by_id(tx, id)?;
        push_event(tx, &a.to_json(), r.time_ms)?;
    }
    Ok((id, new))
}

/// Resolves an open `rule` alert for a device (e.g. silence ended).
/// `resolve_rule`, and each alert it resolved goes to the sinks as
/// resolved (for a condition that ended by itself, said to the SOC).
pub fn resolve_rule_emitted(
    tx: &Connection,
    device: &str,
    rule: &str,
    now_ms: u64,
) -> Result<usize> {
    let ids: Vec<i64> = tx
        .prepare_cached("SELECT id FROM alerts WHERE device = ?1 AND rule = ?2 AND state = 'open'")?
        .query_map(params![device, rule], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let n = resolve_rule(tx, device, rule)?;
    for id in ids {
        let a = alert_by_id(tx, id)?;
        push_event(tx, &a.to_json(), now_ms)?;
    }
    Ok(n)
}

pub fn resolve_rule(tx: &Connection, device: &str, rule: &str) -> Result<usize> {
    Ok(tx
        .prepare_cached("UPDATE alerts SET state = 'resolved' WHERE device = ?1 AND rule = ?2 AND state = 'open'")?
        .execute(params![device, rule])?)
}
