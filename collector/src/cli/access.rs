//! `vigil-collector access ...`: the access record, and the access windows
//! opened and closed by hand (audited).

use serde_json::{json, Value};

use super::args::{AccessCommand, AccessRecord, Global};
use super::{actor, device_id, range, store, usage, views};
use crate::{access, alert, store as archive};

pub fn run(
    g: &Global,
    command: Option<AccessCommand>,
    record: &AccessRecord,
    now: u64,
) -> anyhow::Result<()> {
    match command {
        None => {
            if g.json && record.csv {
                return Err(usage("--csv and --json: choose one"));
            }
            let (from, to) = range(&record.range)?;
            let format = if g.json {
                "json"
            } else if record.csv {
                "csv"
            } else {
                "table"
            };
            let store = store(g)?;
            let device = device_id(&store, record.device.as_deref())?;
            let rows = archive::access::record(store.conn(), device.as_deref(), from, to)?;
            views::access(&rows, format, now);
            Ok(())
        }
        Some(AccessCommand::Open {
            device,
            duration: span,
            reason,
        }) => {
            let ms = access::parse_duration(&span)
                .filter(|&ms| ms <= 31 * 86_400_000)
                .ok_or_else(|| {
                    usage(format!(
                        "--for: `{span}` is not a duration of at most 31d such as 2h, 90m, 1h30m"
                    ))
                })?;
            if reason.trim().is_empty() {
                return Err(usage("--reason: say why (it goes in the audit log)"));
            }
            let mut store = store(g)?;
            let d = store.find_device(&device)?;
            let who = actor();
            let until = now.saturating_add(ms);
            let tx = store.transaction()?;
            let id = access::open_window(&tx, &d.id, now, until, &reason, &who)?;
            tx.commit()?;
            out!(
                "access window {id} open for device {} ({}) until {}",
                d.id,
                d.name,
                alert::rfc3339(until)
            );
            Ok(())
        }
        Some(AccessCommand::Close { device }) => {
            let mut store = store(g)?;
            let d = store.find_device(&device)?;
            let who = actor();
            let tx = store.transaction()?;
            let n = access::close_windows(&tx, &d.id, &who, now)?;
            tx.commit()?;
            out!("{n} access windows closed for device {} ({})", d.id, d.name);
            Ok(())
        }
        Some(AccessCommand::Windows { device }) => {
            let store = store(g)?;
            let device = device_id(&store, device.as_deref())?;
            let ws = archive::access::windows(store.conn(), device.as_deref().unwrap_or(""))?;
            let state = |w: &archive::access::Opened| match w.closed_ms {
                Some(_) => "closed",
                None if w.until_ms <= now => "ended",
                None => "open",
            };
            if g.json {
                let v: Vec<Value> = ws
                    .iter()
                    .map(|w| {
                        json!({"id": w.id, "device": w.device, "from": alert::rfc3339(w.from_ms),
                               "until": alert::rfc3339(w.until_ms), "closed": w.closed_ms.map(alert::rfc3339),
                               "state": state(w), "reason": w.reason, "actor": w.actor})
                    })
                    .collect();
                out!("{}", Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = ws
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.to_string(),
                            w.device.clone(),
                            alert::rfc3339(w.from_ms),
                            alert::rfc3339(w.until_ms),
                            state(w).into(),
                            w.actor.clone(),
                            w.reason.clone(),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    views::table(
                        &["ID", "DEVICE", "FROM", "UNTIL", "STATE", "BY", "REASON"],
                        &rows
                    )
                );
            }
            Ok(())
        }
    }
}
