//! Tamper evidence: a hash chain over what the archive stored and retired,
//! and checkpoints of its head signed by the collector's own key
//! (collector/README.md, "Tamper evidence").
//!
//! `seal` appends one `frames` link for every frame stored since the last
//! link (the writer seals every `SEAL_EVERY` and at stop; the roll-up seals
//! before it deletes): the frames' ids and SHA-256s. The roll-up records
//! each frame it deletes in `retired` (device, boot, seq) and appends a
//! `retired` link over those rows. Each link's `head` hashes the previous
//! head with the link, so editing, removing or re-ordering any link, or any
//! frame a link still covers, shows in `verify`. Someone with write access
//! can rebuild the whole chain; what they cannot rebuild is a checkpoint
//! the SOC already holds: the chain head, counts and every device's key
//! fingerprint, signed with `checkpoint.key` and queued to the sinks.
//! `verify_against` compares the archive with such exported checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use vigil_protocol::{SigningKey, VerifyingKey};

use super::{i, Result, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chain(
  id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,
  kind TEXT NOT NULL CHECK(kind IN ('frames','retired')),
  first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL, frames INTEGER NOT NULL,
  digest BLOB NOT NULL, head BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS retired(
  frame INTEGER PRIMARY KEY, link INTEGER NOT NULL,
  device INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS retired_key ON retired(device, boot, seq);
CREATE TABLE IF NOT EXISTS checkpoints(
  id INTEGER PRIMARY KEY, link INTEGER NOT NULL, time_ms INTEGER NOT NULL, body TEXT NOT NULL);
";

/// The writer seals what it stored at least this often.
pub const SEAL_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The key file beside the archive.
pub const KEY_FILE: &str = "checkpoint.key";

const DOMAIN: &[u8] = b"vigil-chain-v1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(s.get(k..k + 2)?, 16).ok())
        .collect()
}

/// One link as stored.
struct Link {
    id: i64,
    time_ms: i64,
    kind: String,
    first: i64,
    last: i64,
    frames: i64,
    digest: Vec<u8>,
    head: Vec<u8>,
}

impl Link {
    /// A link to append (`append` gives it its id and head).
    fn new(kind: &str, now_ms: u64, (first, last): (i64, i64), n: usize, digest: Vec<u8>) -> Link {
        Link {
            id: 0,
            time_ms: i(now_ms),
            kind: kind.into(),
            first,
            last,
            frames: i64::try_from(n).unwrap_or(i64::MAX),
            digest,
            head: Vec::new(),
        }
    }
}

fn head_of(prev: &[u8], l: &Link) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(l.id.to_le_bytes());
    h.update(l.time_ms.to_le_bytes());
    h.update(l.kind.as_bytes());
    h.update(l.first.to_le_bytes());
    h.update(l.last.to_le_bytes());
    h.update(l.frames.to_le_bytes());
    h.update(&l.digest);
    h.finalize().to_vec()
}

fn last_link(tx: &Connection) -> Result<Option<(i64, Vec<u8>)>> {
    Ok(tx
        .query_row(
            "SELECT id, head FROM chain ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn append(tx: &Connection, mut l: Link) -> Result<i64> {
    let (prev_id, prev) = last_link(tx)?.unwrap_or((0, vec![0; 32]));
    l.id = prev_id + 1;
    l.head = head_of(&prev, &l);
    tx.execute(
        "INSERT INTO chain(id, time_ms, kind, first_frame, last_frame, frames, digest, head)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![l.id, l.time_ms, l.kind, l.first, l.last, l.frames, l.digest, l.head],
    )?;
    Ok(l.id)
}

/// SHA-256 over each frame's id and the SHA-256 of its bytes, in id order.
fn frames_digest(rows: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut h = Sha256::new();
    for (id, bytes) in rows {
        h.update(id.to_le_bytes());
        h.update(Sha256::digest(bytes));
    }
    h.finalize().to_vec()
}

/// SHA-256 over each retired frame's id, device, boot and seq, in id order.
fn retired_digest(rows: &[(i64, i64, i64, i64)]) -> Vec<u8> {
    let mut h = Sha256::new();
    for (id, device, boot, seq) in rows {
        for v in [id, device, boot, seq] {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().to_vec()
}

/// The highest frame id a `frames` link covers.
fn sealed_upto(tx: &Connection) -> Result<Option<i64>> {
    Ok(tx.query_row(
        "SELECT max(last_frame) FROM chain WHERE kind = 'frames'",
        [],
        |r| r.get::<_, Option<i64>>(0),
    )?)
}

/// Where the chain starts: the highest frame id an archive held when it
/// first met a collector with a chain (0 for an archive made with one).
/// Recorded at open, once; the frames up to it predate the chain.
pub(super) fn adopt(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value)
         SELECT 'chain_starts_after_frame', coalesce(max(id), 0) FROM frames",
        [],
    )?;
    Ok(())
}

fn chain_start(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'chain_starts_after_frame'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Appends a `frames` link for every frame stored since the last one;
/// `None` when there is none.
pub fn seal(tx: &Connection, now_ms: u64) -> Result<Option<i64>> {
    let after = match sealed_upto(tx)? {
        Some(n) => n,
        None => chain_start(tx)?,
    };
    let mut st = tx.prepare_cached("SELECT id, bytes FROM frames WHERE id > ?1 ORDER BY id")?;
    let rows: Vec<(i64, Vec<u8>)> = st
        .query_map([after], |r| Ok((r.get(0)?, blob(r.get_ref(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(None);
    };
    let link = Link::new(
        "frames",
        now_ms,
        (first.0, last.0),
        rows.len(),
        frames_digest(&rows),
    );
    Ok(Some(append(tx, link)?))
}

/// Whatever was written into a bytes column, as bytes.
pub(super) fn blob(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    match v {
        rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
        rusqlite::types::ValueRef::Text(t) => t.to_vec(),
        _ => Vec::new(),
    }
}

/// For the roll-up, inside its transaction and before it deletes: seals
/// what is unsealed, then records the frames `condition` selects (an SQL
/// condition on `frames`, with `?1`) as retired under one `retired` link.
pub(super) fn retire(tx: &Connection, condition: &str, arg: i64, now_ms: u64) -> Result<u64> {
    seal(tx, now_ms)?;
    let rows: Vec<(i64, i64, i64, i64)> = tx
        .prepare(&format!(
            "SELECT id, device, boot, seq FROM frames WHERE {condition} ORDER BY id"
        ))?
        .query_map([arg], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(0);
    };
    let link = append(
        tx,
        Link::new(
            "retired",
            now_ms,
            (first.0, last.0),
            rows.len(),
            retired_digest(&rows),
        ),
    )?;
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO retired(frame, link, device, boot, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (id, device, boot, seq) in &rows {
        ins.execute(params![id, link, device, boot, seq])?;
    }
    Ok(rows.len() as u64)
}

/// Whether (device, boot, seq) was stored once and retired by the roll-up
/// (SPEC.md §4: a replay of it is not stored again).
pub fn was_retired(tx: &Connection, num: i64, boot: u32, seq: u64) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM retired WHERE device = ?1 AND boot = ?2 AND seq = ?3")?
        .exists(params![num, boot, i(seq)])?)
}

// ---- the collector's key and checkpoints ---------------------------------

/// The collector's checkpoint key from `checkpoint.key` beside the archive
/// (32 bytes, the Ed25519 seed), made on first use, mode 0600.
pub fn key(db: &Path) -> Result<SigningKey> {
    let path = db.with_file_name(KEY_FILE);
    let refuse = |why: String| StoreError::Refused(format!("{}: {why}", path.display()));
    match std::fs::read(&path) {
        Ok(b) => {
            let seed: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| refuse(format!("{} bytes, not a 32-byte key", b.len())))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| refuse(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| refuse(e.to_string()))?;
            f.write_all(&seed)
                .and_then(|()| f.sync_all())
                .map_err(|e| refuse(e.to_string()))?;
            log::info!("created the checkpoint key {}", path.display());
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// What a checkpoint states, without its signature, in the order it is
/// signed (serde_json keeps insertion order only with `preserve_order`,
/// so the signed text is built by hand).
fn statement(link: i64, head: &str, time_ms: u64, counts: &Counts, collector: &str) -> String {
    let devices: Vec<Value> = counts
        .devices
        .iter()
        .map(|(id, (key, stored, retired))| {
            json!({"id": id, "key_sha256": key, "frames": stored, "retired": retired})
        })
        .collect();
    format!(
        "{{\"vigil_checkpoint\":1,\"link\":{link},\"head\":\"{head}\",\"time_ms\":{time_ms},\"frames_sealed\":{},\"frames_retired\":{},\"devices\":{},\"collector_key\":\"{collector}\"}}",
        counts.sealed,
        counts.retired,
        Value::Array(devices)
    )
}

#[derive(Default)]
struct Counts {
    sealed: i64,
    retired: i64,
    /// device id -> (SHA-256 of its public key text, frames stored, retired)
    devices: BTreeMap<String, (String, i64, i64)>,
}

fn counts(tx: &Connection, upto_frame: i64) -> Result<Counts> {
    let mut c = Counts {
        sealed: tx.query_row(
            "SELECT coalesce(sum(frames), 0) FROM chain WHERE kind = 'frames'",
            [],
            |r| r.get(0),
        )?,
        retired: tx.query_row("SELECT count(*) FROM retired", [], |r| r.get(0))?,
        devices: BTreeMap::new(),
    };
    let mut st = tx.prepare(
        "SELECT d.id, d.public_key,
            (SELECT count(*) FROM frames f WHERE f.device = d.num AND f.id <= ?1),
            (SELECT count(*) FROM retired r WHERE r.device = d.num)
         FROM devices d ORDER BY d.id",
    )?;
    let rows = st.query_map([upto_frame], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (id, key, stored, retired) = row?;
        c.devices
            .insert(id, (hex(&Sha256::digest(key.as_bytes())), stored, retired));
    }
    Ok(c)
}

/// Seals, then signs a checkpoint of the chain head, stores it and queues
/// it to the sinks as an audit event. `None` when the chain is empty.
pub fn checkpoint(tx: &Connection, key: &SigningKey, now_ms: u64) -> Result<Option<Value>> {
    use ed25519_dalek::Signer;
    seal(tx, now_ms)?;
    let Some((link, head)) = last_link(tx)? else {
        return Ok(None);
    };
    let upto = sealed_upto(tx)?.unwrap_or(0);
    let c = counts(tx, upto)?;
    let collector = hex(key.verifying_key().as_bytes());
    let text = statement(link, &hex(&head), now_ms, &c, &collector);
    let sig = key.sign(text.as_bytes());
    let body: Value =
        serde_json::from_str(&text).map_err(|e| StoreError::Refused(e.to_string()))?;
    let signed = json!({"statement": body, "signature": hex(&sig.to_bytes())});
    tx.execute(
        "INSERT INTO checkpoints(link, time_ms, body) VALUES (?1, ?2, ?3)",
        params![link, i(now_ms), signed.to_string()],
    )?;
    super::alerts::push_event(
        tx,
        &json!({
            "type": "audit",
            "time": crate::alert::rfc3339(now_ms),
            "actor": "collector",
            "action": "checkpoint",
            "target": "archive",
            "detail": signed,
        }),
        now_ms,
    )?;
    Ok(Some(signed))
}

/// Every checkpoint the archive holds, oldest first.
pub fn checkpoints(conn: &Connection) -> Result<Vec<Value>> {
    let mut st = conn.prepare("SELECT body FROM checkpoints ORDER BY id")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(serde_json::from_str(&r?).unwrap_or(Value::Null));
    }
    Ok(out)
}

/// A collector key as `checkpoints` prints it (`collector_key`: 64 hex
/// digits).
pub fn parse_key(hex_text: &str) -> Option<VerifyingKey> {
    unhex(hex_text.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
}

// ---- verification --------------------------------------------------------

/// What `verify` found: problems, and notes that are not problems.
#[derive(Debug, Default)]
pub struct ChainReport {
    pub links: u64,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Walks the chain: every head follows from the one before, every
/// `frames` link's frames are there (or retired) and hash to its digest,
/// every `retired` link matches its rows, and no frame outside the chain
/// sits inside it.
pub fn verify(conn: &Connection) -> Result<ChainReport> {
    let mut rep = ChainReport::default();
    let mut st = conn.prepare(
        "SELECT id, time_ms, kind, first_frame, last_frame, frames, digest, head FROM chain ORDER BY id",
    )?;
    let links = st.query_map([], |r| {
        Ok(Link {
            id: r.get(0)?,
            time_ms: r.get(1)?,
            kind: r.get(2)?,
            first: r.get(3)?,
            last: r.get(4)?,
            frames: r.get(5)?,
            digest: blob(r.get_ref(6)?),
            head: blob(r.get_ref(7)?),
        })
    })?;
    let mut prev = vec![0u8; 32];
    let mut expect_id = 1;
    let start = chain_start(conn)?;
    let mut covered_upto: Option<i64> = None;
    for l in links {
        let l = l?;
        rep.links += 1;
        if l.id != expect_id {
            rep.problems.push(format!(
                "chain: link {} follows link {}: links removed",
                l.id,
                expect_id - 1
            ));
        }
        expect_id = l.id + 1;
        if head_of(&prev, &l) != l.head {
            rep.problems.push(format!(
                "chain: link {} does not follow from the link before it: a link was changed or removed",
                l.id
            ));
        }
        prev = l.head.clone();
        match l.kind.as_str() {
            "frames" => {
                if let Some(c) = covered_upto.or(Some(start)) {
                    if l.first <= c {
                        rep.problems
                            .push(format!("chain: link {} overlaps the link before it", l.id));
                    }
                    let between: i64 = conn.query_row(
                        "SELECT count(*) FROM frames WHERE id > ?1 AND id < ?2",
                        params![c, l.first],
                        |r| r.get(0),
                    )?;
                    if between > 0 {
                        rep.problems.push(format!(
                            "chain: {between} frames stored between links that do not cover them (added afterwards)"
                        ));
                    }
                }
                check_frames_link(conn, &l, &mut rep)?;
                covered_upto = Some(l.last);
            }
            "retired" => check_retired_link(conn, &l, &mut rep)?,
            other => rep
                .problems
                .push(format!("chain: link {} of unknown kind `{other}`", l.id)),
        }
    }
    let upto = covered_upto.unwrap_or(start);
    if start > 0 {
        let before: i64 =
            conn.query_row("SELECT count(*) FROM frames WHERE id <= ?1", [start], |r| {
                r.get(0)
            })?;
        rep.notes.push(format!(
            "chain: {before} stored frames predate the chain (stored by an older collector): checked by signature only"
        ));
    }
    {
        let after: i64 =
            conn.query_row("SELECT count(*) FROM frames WHERE id > ?1", [upto], |r| {
                r.get(0)
            })?;
        if after > 0 {
            rep.notes.push(format!(
                "chain: {after} frames stored after the last seal (sealed every {} s)",
                SEAL_EVERY.as_secs()
            ));
        }
    }
    Ok(rep)
}

fn check_frames_link(conn: &Connection, l: &Link, rep: &mut ChainReport) -> Result<()> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT id, bytes FROM frames WHERE id BETWEEN ?1 AND ?2 ORDER BY id")?
        .query_map([l.first, l.last], |r| Ok((r.get(0)?, blob(r.get_ref(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let retired: i64 = conn
        .prepare_cached("SELECT count(*) FROM retired WHERE frame BETWEEN ?1 AND ?2")?
        .query_row([l.first, l.last], |r| r.get(0))?;
    let present = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if present + retired < l.frames {
        rep.problems.push(format!(
            "chain: link {} sealed {} frames (ids {}..{}); {} are missing (neither stored nor retired)",
            l.id,
            l.frames,
            l.first,
            l.last,
            l.frames - present - retired
        ));
    } else if present + retired > l.frames {
        rep.problems.push(format!(
            "chain: link {} sealed {} frames (ids {}..{}); {} are there: frames were added",
            l.id,
            l.frames,
            l.first,
            l.last,
            present + retired
        ));
    } else if retired == 0 && frames_digest(&rows) != l.digest {
        rep.problems.push(format!(
            "chain: the frames of link {} (ids {}..{}) are not the ones it sealed: a frame was changed or replaced",
            l.id, l.first, l.last
        ));
    }
    Ok(())
}

fn check_retired_link(conn: &Connection, l: &Link, rep: &mut ChainReport) -> Result<()> {
    let rows: Vec<(i64, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT frame, device, boot, seq FROM retired WHERE link = ?1 ORDER BY frame",
        )?
        .query_map([l.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) != l.frames
        || retired_digest(&rows) != l.digest
    {
        rep.problems.push(format!(
            "chain: the retired frames of link {} are not the ones the roll-up recorded ({} rows for {})",
            l.id,
            rows.len(),
            l.frames
        ));
    }
    let still: i64 = conn.query_row(
        "SELECT count(*) FROM frames f JOIN retired r ON r.frame = f.id WHERE r.link = ?1",
        [l.id],
        |r| r.get(0),
    )?;
    if still > 0 {
        rep.problems.push(format!(
            "chain: link {}: {still} frames recorded as retired are still stored",
            l.id
        ));
    }
    Ok(())
}

/// Checks the archive against checkpoints exported earlier (JSON lines:
/// the JSON sink's file, or `checkpoints --json`): each signature verifies
/// under the checkpoint's collector key (and, with `pinned`, that key is
/// the one given), the archive's link at that position has that head, and
/// every device the checkpoint names is there with the same key and at
/// least as many frames (stored plus retired).
pub fn verify_against(
    conn: &Connection,
    text: &str,
    pinned: Option<&VerifyingKey>,
) -> Result<(u64, Vec<String>)> {
    let mut problems = Vec::new();
    let mut n = 0u64;
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("checkpoints line {}", line_no + 1);
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // other events in a sink file
        };
        let signed = match v.get("detail") {
            Some(d) if v.get("action").and_then(Value::as_str) == Some("checkpoint") => d,
            Some(_) => continue,
            None if v.get("statement").is_some() => &v,
            None => continue,
        };
        n += 1;
        let (Some(st), Some(sig)) = (
            signed.get("statement"),
            signed.get("signature").and_then(Value::as_str),
        ) else {
            problems.push(format!(
                "{at}: not a checkpoint (no statement or signature)"
            ));
            continue;
        };
        let field = |k: &str| st.get(k);
        let link = field("link").and_then(Value::as_i64).unwrap_or(-1);
        let head = field("head").and_then(Value::as_str).unwrap_or("");
        let time_ms = field("time_ms").and_then(Value::as_u64).unwrap_or(0);
        let collector = field("collector_key").and_then(Value::as_str).unwrap_or("");
        let mut c = Counts {
            sealed: field("frames_sealed").and_then(Value::as_i64).unwrap_or(0),
            retired: field("frames_retired").and_then(Value::as_i64).unwrap_or(0),
            devices: BTreeMap::new(),
        };
        for d in field("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let n = |k: &str| d.get(k).and_then(Value::as_i64).unwrap_or(0);
            c.devices
                .insert(s("id"), (s("key_sha256"), n("frames"), n("retired")));
        }
        let text = statement(link, head, time_ms, &c, collector);
        let key = parse_key(collector);
        let sig = unhex(sig)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b));
        let valid = matches!((&key, sig), (Some(k), Some(s)) if k.verify_strict(text.as_bytes(), &s).is_ok());
        if !valid {
            problems.push(format!("{at}: the checkpoint's signature does not verify"));
            continue;
        }
        if let (Some(p), Some(k)) = (pinned, &key) {
            if p != k {
                problems.push(format!(
                    "{at}: signed by collector key {collector}, not the one given"
                ));
                continue;
            }
        }
        let stored: Option<Vec<u8>> = conn
            .query_row("SELECT head FROM chain WHERE id = ?1", [link], |r| {
                Ok(blob(r.get_ref(0)?))
            })
            .optional()?;
        match stored {
            None => problems.push(format!(
                "{at}: checkpoint of link {link} ({}): the archive's chain has no such link (cut short or rebuilt)",
                crate::alert::rfc3339(time_ms)
            )),
            Some(h) if hex(&h) != head => problems.push(format!(
                "{at}: checkpoint of link {link} ({}): the archive's link has another head: history before it was rewritten",
                crate::alert::rfc3339(time_ms)
            )),
            Some(_) => {}
        }
        for (id, (key_sha, frames, retired)) in &c.devices {
            let row: Option<(i64, String)> = conn
                .query_row(
                    "SELECT num, public_key FROM devices WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            // A device with no frames at the checkpoint had no history to
            // lose: a pending device replaced by a newer one from its
            // address (`max_pending_per_address`) is gone this way.
            if row.is_none() && frames + retired == 0 {
                continue;
            }
            let Some((num, pk)) = row else {
                problems.push(format!(
                    "{at}: device {id} is in the checkpoint and not in the archive (removed)"
                ));
                continue;
            };
            if hex(&Sha256::digest(pk.as_bytes())) != *key_sha {
                problems.push(format!(
                    "{at}: device {id} has another key than at the checkpoint: its history may be re-signed"
                ));
            }
            let now: i64 = conn.query_row(
                "SELECT (SELECT count(*) FROM frames WHERE device = ?1) + (SELECT count(*) FROM retired WHERE device = ?1)",
                [num],
                |r| r.get(0),
            )?;
            if now < frames + retired {
                problems.push(format!(
                    "{at}: device {id} had {} frames at the checkpoint, the archive holds {now}: frames removed",
                    frames + retired
                ));
            }
        }
    }
    if n == 0 {
        return Err(StoreError::Refused(
            "no checkpoint in the file (give the JSON sink's file or `checkpoints --json` output)"
                .into(),
        ));
    }
    Ok((n, problems))
}
