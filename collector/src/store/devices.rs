//! Devices: enrollment, states, the registry version, what a `Hello` says about a device.

use super::alerts::admin;
use super::baselines::start_baseline;
use super::*;

impl Store {
    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut st = self.conn.prepare(
            "SELECT d.id, d.public_key, d.name, d.model, d.state, d.created_ms, t.last_seen_ms,
                    coalesce(t.frames_received, 0), t.boot, t.high_seq, t.acked_seq, t.above, t.hole_since_ms, d.hello,
                    (SELECT count(*) FROM alerts a WHERE a.device = d.id AND a.state != 'resolved'), d.num, d.peer
             FROM devices d LEFT JOIN tracks t ON t.device = d.id ORDER BY d.name, d.id",
        )?;
        let rows = st.query_map([], |r| {
            let boot: Option<i64> = r.get(8)?;
            let track = boot.map(|b| Track {
                boot: u32::try_from(b).unwrap_or(0),
                high: r.get::<_, Option<i64>>(9).ok().flatten().map_or(0, u),
                acked: r.get::<_, Option<i64>>(10).ok().flatten().map(u),
                above: Track::decode_above(&r.get::<_, String>(11).unwrap_or_default()),
                hole_since_ms: r.get::<_, Option<i64>>(12).ok().flatten().map(u),
            });
            Ok(Device {
                id: r.get(0)?,
                num: r.get(15)?,
                public_key: r.get(1)?,
                name: r.get(2)?,
                model: r.get(3)?,
                state: DeviceState::parse(&r.get::<_, String>(4)?),
                created_ms: u(r.get(5)?),
                last_seen_ms: r.get::<_, Option<i64>>(6)?.map(u),
                frames_received: u(r.get(7)?),
                track,
                hello: r
                    .get::<_, Option<String>>(13)?
                    .and_then(|h| serde_json::from_str(&h).ok()),
                open_alerts: u(r.get(14)?),
                peer: r.get(16)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Finds one device by id, id prefix (at least 4 digits) or exact name.
    pub fn find_device(&self, what: &str) -> Result<Device> {
        let all = self.devices()?;
        let by_id: Vec<&Device> = all.iter().filter(|d| d.id == what).collect();
        if let [d] = by_id.as_slice() {
            return Ok((*d).clone());
        }
        let matches: Vec<&Device> = all
            .iter()
            .filter(|d| d.name == what || (what.len() >= 4 && d.id.starts_with(what)))
            .collect();
        match matches.as_slice() {
            [] => Err(StoreError::NoDevice(what.to_string())),
            [d] => Ok((*d).clone()),
            _ => Err(StoreError::Ambiguous(what.to_string())),
        }
    }

    /// Approves a device ahead of time (or a pending one) under a name.
    pub fn enroll(
        &mut self,
        key: &VerifyingKey,
        name: &str,
        model: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<String> {
        let id = DeviceId::of(key).to_string();
        let mut text = String::new();
        let _ = vigil_protocol::frame::write_public_key(&mut text, key);
        let tx = self.transaction()?;
        let existing: Option<String> = tx
            .query_row("SELECT state FROM devices WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .optional()?;
        match existing.as_deref() {
            Some("revoked") => {
                return Err(StoreError::Refused(format!(
                    "device {id} is revoked; a revoked key cannot be enrolled again (generate a new key on the device)"
                )))
            }
            Some(_) => {
                tx.execute(
                    "UPDATE devices SET state = 'approved', name = ?2, model = ?3 WHERE id = ?1",
                    params![id, name, model],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO devices(id, num, public_key, name, model, state, created_ms)
                     VALUES (?1, (SELECT coalesce(max(num), 0) + 1 FROM devices), ?2, ?3, ?4, 'approved', ?5)",
                    params![id, text, name, model, i(now_ms)],
                )?;
            }
        }
        start_baseline(&tx, &id, now_ms)?;
        admin(
            &tx,
            actor,
            "enroll",
            &id,
            json!({"name": name, "model": model, "key": text}),
            now_ms,
        )?;
        bump_registry(&tx)?;
        tx.commit()?;
        Ok(id)
    }

    /// `approve` / `revoke`.
    pub fn set_state(
        &mut self,
        what: &str,
        state: DeviceState,
        actor: &str,
        now_ms: u64,
    ) -> Result<Device> {
        let d = self.find_device(what)?;
        if d.state == DeviceState::Revoked && state != DeviceState::Revoked {
            return Err(StoreError::Refused(format!(
                "device {} is revoked; a revoked key cannot be approved again",
                d.id
            )));
        }
        let tx = self.transaction()?;
        tx.execute(
            "UPDATE devices SET state = ?2 WHERE id = ?1",
            params![d.id, state.name()],
        )?;
        if state == DeviceState::Approved {
            start_baseline(&tx, &d.id, now_ms)?;
        }
        let action = match state {
            DeviceState::Approved => "approve",
            DeviceState::Revoked => "revoke",
            DeviceState::Pending => "pend",
        };
        admin(
            &tx,
            actor,
            action,
            &d.id,
            json!({"name": d.name, "previous": d.state.name()}),
            now_ms,
        )?;
        bump_registry(&tx)?;
        tx.commit()?;
        self.find_device(&d.id)
    }

    // ---- baselines ----------------------------------------------------
}

/// Inserts a device seen for the first time with a valid self-signed Hello.
pub fn insert_pending(
    tx: &Connection,
    key: &VerifyingKey,
    hello: &Hello,
    peer: &str,
    now_ms: u64,
) -> Result<()> {
    let mut text = String::new();
    let _ = vigil_protocol::frame::write_public_key(&mut text, key);
    tx.execute(
        "INSERT OR IGNORE INTO devices(id, num, public_key, name, state, created_ms, hello, peer)
         VALUES (?1, (SELECT coalesce(max(num), 0) + 1 FROM devices), ?2, ?3, 'pending', ?4, ?5, ?6)",
        params![
            DeviceId::of(key).to_string(),
            text,
            hello.hostname.as_str(),
            i(now_ms),
            hello_json(hello).to_string(),
            peer
        ],
    )?;
    bump_registry(tx)?;
    Ok(())
}

/// Pending devices whose `Hello` came from `address` (no port), oldest first.
pub fn pending_from(tx: &Connection, address: &str) -> Result<Vec<String>> {
    let mut st = tx.prepare_cached(
        "SELECT id, coalesce(peer, '') FROM devices WHERE state = 'pending' ORDER BY created_ms, num",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut ids = Vec::new();
    for r in rows {
        let (id, peer) = r?;
        if address_of(&peer) == address {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Forgets a pending device (never approved, so nothing of it is stored).
pub fn drop_pending(tx: &Connection, id: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM devices WHERE id = ?1 AND state = 'pending'
           AND NOT EXISTS (SELECT 1 FROM frames f WHERE f.device = devices.num)",
        [id],
    )?;
    bump_registry(tx)?;
    Ok(())
}

/// Updates a device after a batch: counters, last seen, sequence track,
/// inventory (when a Hello came).
pub fn update_device(
    tx: &Connection,
    device: &str,
    frames: u64,
    last_seen_ms: u64,
    track: &Track,
    hello: Option<&Hello>,
    peer: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO tracks(device, last_seen_ms, frames_received, boot, high_seq, acked_seq, above, hole_since_ms)
         VALUES (?1, ?3, ?2, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(device) DO UPDATE SET
            frames_received = frames_received + excluded.frames_received,
            last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
            boot = excluded.boot, high_seq = excluded.high_seq, acked_seq = excluded.acked_seq,
            above = excluded.above, hole_since_ms = excluded.hole_since_ms",
    )?
    .execute(params![
        device,
        i(frames),
        i(last_seen_ms),
        track.boot,
        i(track.high),
        track.acked.map(i),
        track.encode_above(),
        track.hole_since_ms.map(i),
    ])?;
    if let Some(h) = hello {
        tx.prepare_cached("UPDATE devices SET hello = ?2, peer = ?3 WHERE id = ?1")?
            .execute(params![device, hello_json(h).to_string(), peer])?;
    }
    Ok(())
}

/// Approved devices silent since before `cutoff_ms` (never seen counts
/// from enrollment).
/// The archive's number for a device id.
pub fn device_num(tx: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT num FROM devices WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// A device's enrollment state in the archive, if it is there.
pub fn device_state(tx: &Connection, id: &str) -> Result<Option<DeviceState>> {
    Ok(tx
        .prepare_cached("SELECT state FROM devices WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|s| DeviceState::parse(&s)))
}

pub fn silent_devices(conn: &Connection, cutoff_ms: u64) -> Result<Vec<(String, Option<u64>)>> {
    let mut st = conn.prepare_cached(
        "SELECT d.id, t.last_seen_ms FROM devices d LEFT JOIN tracks t ON t.device = d.id
         WHERE d.state = 'approved' AND coalesce(t.last_seen_ms, d.created_ms) < ?1",
    )?;
    let rows = st.query_map([i(cutoff_ms)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?.map(u)))
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

pub fn hello_json(h: &Hello) -> Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    json!({
        "agent_version": h.agent_version.as_str(),
        "hostname": h.hostname.as_str(),
        "kernel_release": h.kernel_release.as_str(),
        "os_release": h.os_release.as_str(),
        "arch": h.arch.as_str(),
        "kernel_boot_id": hex(&h.kernel_boot_id),
        "boot_time": crate::alert::rfc3339(h.boot_time_s.saturating_mul(1000)),
        "cpus": h.cpus,
        "interfaces": h.interfaces.iter().map(|i| json!({
            "name": i.name.as_str(),
            "mac": i.mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
        })).collect::<Vec<_>>(),
        "disks": h.disks.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "manifests": h.manifests.iter().map(|m| json!({
            "class": m.class.name(), "issuer": m.issuer.as_str(), "scope": m.scope.as_str(), "version": m.version,
        })).collect::<Vec<_>>(),
    })
}

/// An address without its port (`serial:PATH` stays whole).
pub fn address_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((a, port)) if !peer.starts_with("serial:") && port.parse::<u16>().is_ok() => {
            a.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer,
    }
}
