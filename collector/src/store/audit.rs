//! `audit`: every stored frame re-verified, and the rows decoded from it
//! compared with the rows stored; the hash chain walked (`chain::verify`);
//! every sequence hole that no Gap, roll-up or loss alert explains named.

use super::frames::{Layout, Rows};
use super::*;

impl Store {
    /// Re-verifies every stored frame against its device's key and checks
    /// the rows decoded from it. Returns one line per problem.
    pub fn audit(&self) -> Result<AuditReport> {
        let keys: BTreeMap<String, Option<VerifyingKey>> = self
            .devices()?
            .into_iter()
            .map(|d| (d.id, vigil_protocol::frame::parse_public_key(&d.public_key)))
            .collect();
        let mut report = AuditReport::default();
        // A device's id is the hash of its key: a key swapped in the
        // archive (history re-signed under another key) shows here.
        for (id, key) in &keys {
            match key {
                Some(k) if DeviceId::of(k).to_string() == *id => {}
                Some(_) => report.problems.push(format!(
                    "device {id}: the key on record is not the key its id was made from (replaced)"
                )),
                None => report.problems.push(format!(
                    "device {id}: the key on record is not a valid ed25519 key"
                )),
            }
        }
        let mut st = self.conn.prepare(
            "SELECT d.id, f.boot, f.seq, f.bytes, f.id FROM frames f JOIN devices d ON d.num = f.device
                 ORDER BY f.device, f.boot, f.seq",
        )?;
        let mut rows = st.query([])?;
        // The Hello in force names interfaces and disks for later samples.
        let mut layout: Option<(String, u32, Layout)> = None;
        let mut expected = Rows::default();
        // (device, boot) -> the ranges its Gaps name, [first, end).
        let mut gaps: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let frame_id: i64 = r.get(4)?;
            report.frames += 1;
            // A row written by something else than this collector (any
            // type fits any SQLite column) is one problem, not the end of
            // the audit.
            let key = (
                r.get::<_, String>(0),
                r.get::<_, i64>(1).ok().and_then(|b| u32::try_from(b).ok()),
                r.get::<_, i64>(2).ok().and_then(|s| u64::try_from(s).ok()),
            );
            let (Ok(device), Some(boot), Some(seq)) = key else {
                report.problems.push(format!(
                    "frame row {frame_id}: device, boot or sequence is not a value this collector writes"
                ));
                continue;
            };
            let at = format!("frame {device}/{boot}/{seq}");
            // Whatever was written into the column, audit it as bytes.
            let bytes = super::chain::blob(r.get_ref(3)?);
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
            if let Body::Gap(g) = &body {
                gaps.entry((device.clone(), boot)).or_default().extend(
                    g.ranges
                        .iter()
                        .map(|r| (r.first, r.first.saturating_add(r.count))),
                );
            }
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
        drop(rows);
        drop(st);
        self.holes(&gaps, &mut report)?;
        let chain = super::chain::verify(&self.conn)?;
        report.links = chain.links;
        report.problems.extend(chain.problems);
        report.notes.extend(chain.notes);
        Ok(report)
    }

    /// `chain::verify_against` on this archive.
    pub fn audit_against(
        &self,
        text: &str,
        pinned: Option<&VerifyingKey>,
    ) -> Result<(u64, Vec<String>)> {
        super::chain::verify_against(&self.conn, text, pinned)
    }

    /// The signed checkpoints this archive holds, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Value>> {
        super::chain::checkpoints(&self.conn)
    }

    /// Sequence numbers missing inside a boot (below the highest one stored
    /// or retired) that neither a Gap of that boot nor a loss alert names.
    fn holes(
        &self,
        gaps: &BTreeMap<(String, u32), Vec<(u64, u64)>>,
        report: &mut AuditReport,
    ) -> Result<()> {
        // Loss the collector already alerted on, in transit or in its own
        // archive's recovery: (device, boot) -> ranges.
        let mut alerted: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
        let mut st = self
            .conn
            .prepare("SELECT device, evidence FROM alerts WHERE rule IN (?1, ?2)")?;
        let rows = st.query_map(
            [
                crate::alert::SEQUENCE_LOSS.id,
                crate::alert::ARCHIVE_LOSS.id,
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
        for row in rows {
            let (device, ev) = row?;
            let ev: Value = serde_json::from_str(&ev).unwrap_or(Value::Null);
            let n = |k: &str| ev.get(k).and_then(Value::as_u64);
            if let (Some(boot), Some(from), Some(to)) =
                (n("boot"), n("missing_from"), n("missing_to"))
            {
                alerted
                    .entry((device, u32::try_from(boot).unwrap_or(u32::MAX)))
                    .or_default()
                    .push((from, to.saturating_add(1)));
            }
        }
        let mut st = self.conn.prepare(
            "SELECT d.id, boot, prev + 1, seq - 1 FROM (
               SELECT device, boot, seq, lag(seq) OVER (PARTITION BY device, boot ORDER BY seq) AS prev
               FROM (SELECT device, boot, seq FROM frames UNION ALL SELECT device, boot, seq FROM retired))
             JOIN devices d ON d.num = device
             WHERE prev IS NOT NULL AND seq > prev + 1 ORDER BY d.id, boot, seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                u(r.get(2)?),
                u(r.get(3)?),
            ))
        })?;
        // Holes above the ack in a device's current boot may still be
        // resent: not yet a problem (the loss alert comes after the grace).
        let mut live: BTreeMap<String, (u32, Option<u64>)> = BTreeMap::new();
        let mut tst = self
            .conn
            .prepare("SELECT device, boot, acked_seq FROM tracks")?;
        for t in tst.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                r.get::<_, Option<i64>>(2)?.map(u),
            ))
        })? {
            let (d, b, a) = t?;
            live.insert(d, (b, a));
        }
        let none = Vec::new();
        for row in rows {
            let (device, boot, from, to) = row?;
            let key = (device.clone(), boot);
            let named: Vec<(u64, u64)> = gaps
                .get(&key)
                .unwrap_or(&none)
                .iter()
                .chain(alerted.get(&key).unwrap_or(&none))
                .copied()
                .collect();
            // What of [from, to] no named range covers, as ranges.
            let mut unnamed = Vec::new();
            let mut s = from;
            while s <= to {
                match named.iter().find(|(a, b)| *a <= s && s < *b) {
                    Some((_, b)) => s = *b,
                    None => {
                        let next = named
                            .iter()
                            .filter(|(a, _)| *a > s)
                            .map(|(a, _)| *a)
                            .min()
                            .unwrap_or(u64::MAX)
                            .min(to.saturating_add(1));
                        unnamed.push((s, next - 1));
                        s = next;
                    }
                }
            }
            let pending = live
                .get(&device)
                .is_some_and(|(b, acked)| *b == boot && acked.map_or(true, |k| from > k));
            for (a, b) in unnamed {
                if pending {
                    report.notes.push(format!(
                        "device {device} boot {boot}: sequence {a}..={b} not received yet (above its ack: may still be resent)"
                    ));
                    continue;
                }
                report.problems.push(format!(
                    "device {device} boot {boot}: sequence {a}..={b} ({} frames) missing, and no Gap, roll-up or loss alert names it",
                    b - a + 1
                ));
            }
        }
        Ok(())
    }

    // ---- retention ---------------------------------------------------------
}

#[derive(Debug, Default)]
pub struct AuditReport {
    pub frames: u64,
    /// Links of the hash chain walked.
    pub links: u64,
    pub problems: Vec<String>,
    /// Facts that are not problems (frames older than the chain, frames
    /// not sealed yet).
    pub notes: Vec<String>,
}
