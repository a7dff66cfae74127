//! `vigil-collector baseline ...`: review, close, approve, reset, export
//! and import baselines; every change goes in the admin log.

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use super::args::{BaselineCommand, Global};
use super::{actor, store, usage, views};
use crate::detect;
use crate::store::Store;
use crate::{alert, store as archive};

pub fn run(g: &Global, command: BaselineCommand, now: u64) -> anyhow::Result<()> {
    let cfg = super::config(g)?;
    let policy = cfg.detect.policy()?;
    let period_ms = policy.baseline_period_ms;
    let tuning = detect::score::Tuning::default();
    let (sub, what) = match command {
        BaselineCommand::Import { model, file } => return import(g, &model, &file, now),
        BaselineCommand::Show { device } => ("show", device),
        BaselineCommand::Close { device } => ("close", device),
        BaselineCommand::Approve { device } => ("approve", device),
        BaselineCommand::Reset { device } => ("reset", device),
        BaselineCommand::Export { device } => ("export", device),
    };
    let mut store = store(g)?;
    let d = store.find_device(&what)?;
    let Some((row, mut b)) = load(&store, &d.id)? else {
        return Err(usage(format!(
            "device {} has no baseline: it starts when the device is approved",
            d.id
        )));
    };
    let refuse = |m: String| anyhow!(archive::StoreError::Refused(m));
    match sub {
        "show" => {
            let mut summary = if b.phase == detect::baseline::Phase::Baselining {
                // A preview of what closing now would learn.
                let mut preview = b.clone();
                learn_from_archive(&store, &d.id, &mut preview, now)?;
                preview.phase = detect::baseline::Phase::Baselining;
                preview.closed_ms = None;
                let mut s = preview.summary(&policy, &tuning);
                s["preview"] = json!(true);
                s
            } else {
                b.summary(&policy, &tuning)
            };
            summary["rev"] = json!(row.rev);
            views::baseline(&d, &summary, g.json);
            Ok(())
        }
        "close" => {
            if b.phase != detect::baseline::Phase::Baselining {
                return Err(refuse(format!(
                    "the baseline of {} is already {}",
                    d.id,
                    b.phase.name()
                )));
            }
            let n = learn_from_archive(&store, &d.id, &mut b, now)?;
            save(
                &mut store,
                &d.id,
                &b,
                "baseline-close",
                json!({"samples": n, "metrics": b.learned.metrics.len()}),
                now,
            )?;
            out!(
                "baseline of {} ({}) closed: learned {} metrics from {n} samples, {} listeners, {} outbound endpoints; review with `baseline show`, then `baseline approve`",
                d.id, d.name, b.learned.metrics.len(), b.learned.listeners.len(), b.learned.outbound.len()
            );
            Ok(())
        }
        "approve" => {
            if b.phase != detect::baseline::Phase::Review {
                return Err(refuse(format!(
                    "the baseline of {} is {}: only a closed baseline under review can be approved{}",
                    d.id,
                    b.phase.name(),
                    if b.phase == detect::baseline::Phase::Baselining { " (close it first)" } else { "" }
                )));
            }
            b.approve(now);
            save(
                &mut store,
                &d.id,
                &b,
                "baseline-approve",
                json!({"metrics": b.learned.metrics.len()}),
                now,
            )?;
            out!(
                "baseline of {} ({}) approved: the device is monitored against it",
                d.id,
                d.name
            );
            for note in views::review_notes(&b.summary(&policy, &tuning)) {
                out!("note: {note}");
            }
            Ok(())
        }
        "reset" => {
            let previous = b.phase.name();
            let fresh = detect::baseline::Baseline::new(now);
            save(
                &mut store,
                &d.id,
                &fresh,
                "baseline-reset",
                json!({"previous": previous}),
                now,
            )?;
            out!(
                "baseline of {} ({}) reset: learning again until {}",
                d.id,
                d.name,
                alert::rfc3339(now.saturating_add(period_ms))
            );
            Ok(())
        }
        "export" => {
            if b.phase == detect::baseline::Phase::Baselining {
                return Err(refuse(format!(
                    "the baseline of {} is still learning; close and approve it first",
                    d.id
                )));
            }
            let doc = detect::baseline::Exported {
                format: detect::baseline::EXPORT_FORMAT.into(),
                device: d.id.clone(),
                name: d.name.clone(),
                model: d.model.clone(),
                approved: b.approved_ms.map(alert::rfc3339),
                learned: b.learned,
            };
            out!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        other => Err(usage(format!("unknown baseline command `{other}`"))),
    }
}

/// `baseline import --model MODEL FILE`: one baseline for every device of
/// the model, now and when enrolled later.
fn import(g: &Global, model: &str, file: &std::path::Path, now: u64) -> anyhow::Result<()> {
    let file = file.display().to_string();
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let doc: detect::baseline::Exported = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{file}: not a baseline export ({e})")))?;
    if doc.format != detect::baseline::EXPORT_FORMAT {
        return Err(usage(format!(
            "{file}: format `{}`, this collector reads `{}`",
            doc.format,
            detect::baseline::EXPORT_FORMAT
        )));
    }
    if doc.learned.metrics.is_empty() && doc.learned.listeners.is_empty() {
        return Err(usage(format!(
            "{file}: the baseline learned nothing; export an approved one"
        )));
    }
    let mut store = store(g)?;
    let fleet = serde_json::to_string(&doc.learned)?;
    let stored: std::collections::HashMap<String, detect::baseline::Baseline> = store
        .baselines()?
        .into_iter()
        .filter_map(|(id, row)| {
            detect::baseline::Baseline::from_row(&row)
                .ok()
                .map(|b| (id, b))
        })
        .collect();
    let learned = doc.learned.clone();
    let devices = store.import_fleet_baseline(
        model,
        &fleet,
        |id| {
            let mut b = stored
                .get(id)
                .cloned()
                .unwrap_or_else(|| detect::baseline::Baseline::new(now));
            b.adopt(learned.clone(), model, now);
            b.to_json()
        },
        &actor(),
        json!({"file": file, "from_device": doc.device, "from_name": doc.name}),
        now,
    )?;
    out!(
        "fleet baseline for model {model} imported (learned on {} {}); {} device(s) now monitor against it{}",
        doc.name,
        doc.device,
        devices.len(),
        if devices.is_empty() { String::new() } else { format!(": {}", devices.join(", ")) }
    );
    Ok(())
}

/// A device's stored baseline, if it has one.
pub fn load(
    store: &Store,
    id: &str,
) -> anyhow::Result<Option<(crate::store::BaselineRow, detect::baseline::Baseline)>> {
    let Some(row) = store.baseline(id)? else {
        return Ok(None);
    };
    let b = detect::baseline::Baseline::from_row(&row).map_err(|e| anyhow!("device {id}: {e}"))?;
    Ok(Some((row, b)))
}

/// Stores an admin change to a device's baseline, with its admin-log entry.
pub fn save(
    store: &mut Store,
    id: &str,
    b: &detect::baseline::Baseline,
    action: &str,
    detail: Value,
    now: u64,
) -> anyhow::Result<()> {
    store.set_baseline(
        id,
        b.phase.name(),
        b.started_ms,
        &b.to_json(),
        &actor(),
        action,
        detail,
        now,
    )?;
    Ok(())
}

/// The metric profiles learned from a device's archived samples since
/// its baseline started.
fn learn_from_archive(
    store: &Store,
    id: &str,
    b: &mut detect::baseline::Baseline,
    now: u64,
) -> anyhow::Result<u64> {
    let mut learning = detect::baseline::MetricLearning::default();
    let t = detect::score::Tuning::default();
    let n = store.for_each_sample(id, b.started_ms, now, |s, l| learning.add(s, l, &t))?;
    b.close(learning, now);
    Ok(n)
}
