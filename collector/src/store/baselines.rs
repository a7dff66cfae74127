//! Baselines as stored: one JSON document per device, its revision, fleet baselines per model.

use super::alerts::admin;
use super::*;

impl Store {
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

    /// A model's fleet baseline with when it was imported.
    pub fn fleet_baseline_row(&self, model: &str) -> Result<Option<(String, u64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT body, imported_ms FROM fleet_baselines WHERE model = ?1",
                params![model],
                |r| Ok((r.get::<_, String>(0)?, u(r.get(1)?))),
            )
            .optional()?)
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
pub(super) fn start_baseline(tx: &Connection, device: &str, now_ms: u64) -> Result<()> {
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
