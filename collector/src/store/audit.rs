//! `audit`: every stored frame re-verified, and the rows decoded from it compared with the rows stored.

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
}

#[derive(Debug, Default)]
pub struct AuditReport {
    pub frames: u64,
    pub problems: Vec<String>,
}
