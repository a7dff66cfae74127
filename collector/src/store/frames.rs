//! Frames and the rows decoded from them: exactly-once storage, samples, export, the roll-up of old samples.

use super::*;

impl Store {
    /// Calls `f` with every archived sample of `device` that arrived in
    /// `[from_ms, to_ms)` (the collector's clock: a device's clock may be
    /// off), in the device's time order, rebuilt as the device sent it
    /// (interfaces named by `Layout`): what a baseline learns from.
    pub fn for_each_sample(
        &self,
        device: &str,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(&vigil_protocol::sample::Sample, &Layout),
    ) -> Result<u64> {
        use vigil_protocol::sample::{
            CpuTicks, DiskCounters, Memory, NetCounters, Pressure, Sample,
        };
        let mut st = self.conn.prepare(
            "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.device = (SELECT num FROM devices WHERE id = ?1)
               AND f.received_ms >= ?2 AND f.received_ms < ?3
             ORDER BY s.time_ms, f.boot, f.seq, s.idx",
        )?;
        let mut net = self.conn.prepare(
            "SELECT iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 AND idx = ?2 ORDER BY iface",
        )?;
        let mut disk = self.conn.prepare(
            "SELECT reads, read_sectors, writes, write_sectors, io_ms
             FROM sample_disk WHERE frame = ?1 AND idx = ?2 ORDER BY disk",
        )?;
        let mut rows = st.query(params![device, i(from_ms), i(to_ms)])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let g = |k: usize| r.get::<_, i64>(k).map(u);
            let o = |k: usize| r.get::<_, Option<i64>>(k).map(|v| v.map(u));
            let (frame, idx): (i64, i64) = (r.get(0)?, r.get(1)?);
            let pressure = match (o(17)?, o(18)?, o(19)?, o(20)?, o(21)?) {
                (Some(a), Some(b), Some(c), Some(d), Some(e)) => Some(Pressure {
                    cpu_some_ms: a,
                    memory_some_ms: b,
                    memory_full_ms: c,
                    io_some_ms: d,
                    io_full_ms: e,
                }),
                _ => None,
            };
            let mut s = Sample {
                time_ms: g(2)?,
                interval_ms: g(3)?,
                uptime_s: g(4)?,
                cpu: CpuTicks {
                    user: g(5)?,
                    nice: g(6)?,
                    system: g(7)?,
                    idle: g(8)?,
                    iowait: g(9)?,
                    irq: g(10)?,
                    softirq: g(11)?,
                    steal: g(12)?,
                },
                memory: Memory {
                    total_kib: g(13)?,
                    available_kib: g(14)?,
                    swap_total_kib: g(15)?,
                    swap_used_kib: g(16)?,
                },
                pressure,
                load_centi: [g(22)?, g(23)?, g(24)?],
                processes: g(25)?,
                ..Sample::default()
            };
            let mut layout = Layout::default();
            let mut nets = net.query(params![frame, idx])?;
            while let Some(x) = nets.next()? {
                let h = |k: usize| x.get::<_, i64>(k).map(u);
                let index = u8::try_from(layout.interfaces.len()).unwrap_or(u8::MAX);
                layout.interfaces.push(x.get(0)?);
                let _ = s.net.push(NetCounters {
                    iface: index,
                    rx_bytes: h(1)?,
                    rx_packets: h(2)?,
                    rx_errors: h(3)?,
                    rx_dropped: h(4)?,
                    tx_bytes: h(5)?,
                    tx_packets: h(6)?,
                    tx_errors: h(7)?,
                    tx_dropped: h(8)?,
                });
            }
            let mut disks = disk.query(params![frame, idx])?;
            while let Some(x) = disks.next()? {
                let h = |k: usize| x.get::<_, i64>(k).map(u);
                let index = u8::try_from(s.disk.len()).unwrap_or(u8::MAX);
                let _ = s.disk.push(DiskCounters {
                    disk: index,
                    reads: h(0)?,
                    read_sectors: h(1)?,
                    writes: h(2)?,
                    write_sectors: h(3)?,
                    io_ms: h(4)?,
                });
            }
            f(&s, &layout);
            n += 1;
        }
        Ok(n)
    }

    // ---- alerts --------------------------------------------------------

    /// Samples of a device in `[from, to)`, oldest first, as JSON objects.
    pub fn export(&self, device: &str, from_ms: u64, to_ms: u64) -> Result<Vec<Value>> {
        let mut st = self.conn.prepare(
            "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    load1_centi, load5_centi, load15_centi, processes
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.device = (SELECT num FROM devices WHERE id = ?1) AND s.time_ms >= ?2 AND s.time_ms < ?3
             ORDER BY s.time_ms, f.boot, f.seq, s.idx",
        )?;
        let rows = st.query_map(params![device, i(from_ms), i(to_ms)], sample_json)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, v) = row?;
            out.push(self.with_network(key, v)?);
        }
        Ok(out)
    }

    fn with_network(&self, (frame, idx): (i64, i64), mut v: Value) -> Result<Value> {
        let mut net = self.conn.prepare_cached(
            "SELECT iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 AND idx = ?2 ORDER BY iface",
        )?;
        let ifaces = net.query_map(params![frame, idx], |r| {
            Ok(json!({
                "iface": r.get::<_, String>(0)?,
                "rx_bytes": r.get::<_, i64>(1)?, "rx_packets": r.get::<_, i64>(2)?,
                "rx_errors": r.get::<_, i64>(3)?, "rx_dropped": r.get::<_, i64>(4)?,
                "tx_bytes": r.get::<_, i64>(5)?, "tx_packets": r.get::<_, i64>(6)?,
                "tx_errors": r.get::<_, i64>(7)?, "tx_dropped": r.get::<_, i64>(8)?,
            }))
        })?;
        v["network"] = Value::Array(ifaces.collect::<std::result::Result<_, _>>()?);
        Ok(v)
    }

    /// The newest sample of a device (highest boot and sequence).
    pub fn latest_sample(&self, device: &str) -> Result<Option<Value>> {
        let row = self
            .conn
            .query_row(
                "SELECT s.frame, s.idx, s.time_ms, s.interval_ms, s.uptime_s,
                        cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                        mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                        load1_centi, load5_centi, load15_centi, processes
                 FROM frames f JOIN samples s ON s.frame = f.id
                 WHERE f.device = (SELECT num FROM devices WHERE id = ?1) AND f.kind = 'samples'
                 ORDER BY f.boot DESC, f.seq DESC, s.idx DESC LIMIT 1",
                [device],
                sample_json,
            )
            .optional()?;
        row.map(|(key, v)| self.with_network(key, v)).transpose()
    }

    /// Rolls raw samples received before `cutoff_ms` up into per-minute
    /// aggregates (the minutes of the device's own times) and deletes them
    /// with their `Samples` frames. Security frames, socket changes and
    /// alerts are kept. Age is the collector's receive time, never the
    /// device's clock: a device dated 1970 would have its samples rolled
    /// up on arrival, one dated 2100 never.
    pub fn roll_up(&mut self, cutoff_ms: u64) -> Result<u64> {
        let tx = self.transaction()?;
        tx.execute(
            "INSERT INTO samples_minute(device, minute_ms, samples, cpu_busy, cpu_total,
                mem_available_kib_min, mem_available_kib_avg, swap_used_kib_max, processes_max,
                load1_centi_max, rx_bytes, tx_bytes)
             SELECT (SELECT id FROM devices d WHERE d.num = f.device), s.time_ms / 60000 * 60000, count(*),
                sum(cpu_user + cpu_nice + cpu_system + cpu_iowait + cpu_irq + cpu_softirq + cpu_steal),
                sum(cpu_user + cpu_nice + cpu_system + cpu_idle + cpu_iowait + cpu_irq + cpu_softirq + cpu_steal),
                min(mem_available_kib), avg(mem_available_kib), max(swap_used_kib), max(processes),
                max(load1_centi),
                coalesce(sum((SELECT sum(rx_bytes) FROM sample_net n WHERE n.frame = s.frame AND n.idx = s.idx)), 0),
                coalesce(sum((SELECT sum(tx_bytes) FROM sample_net n WHERE n.frame = s.frame AND n.idx = s.idx)), 0)
             FROM frames f JOIN samples s ON s.frame = f.id
             WHERE f.kind = 'samples' AND f.received_ms < ?1 AND f.id < (SELECT max(id) FROM frames)
             GROUP BY f.device, s.time_ms / 60000
             ON CONFLICT(device, minute_ms) DO UPDATE SET
                samples = samples + excluded.samples, cpu_busy = cpu_busy + excluded.cpu_busy,
                cpu_total = cpu_total + excluded.cpu_total,
                mem_available_kib_min = min(mem_available_kib_min, excluded.mem_available_kib_min),
                mem_available_kib_avg = (mem_available_kib_avg * samples
                    + excluded.mem_available_kib_avg * excluded.samples)
                    / (samples + excluded.samples),
                swap_used_kib_max = max(swap_used_kib_max, excluded.swap_used_kib_max),
                processes_max = max(processes_max, excluded.processes_max),
                load1_centi_max = max(load1_centi_max, excluded.load1_centi_max),
                rx_bytes = rx_bytes + excluded.rx_bytes, tx_bytes = tx_bytes + excluded.tx_bytes",
            [i(cutoff_ms)],
        )?;
        // Sealed, then named in the chain as retired: `audit` can tell a
        // roll-up from a deletion, and a replay of one is not stored again.
        // The newest frame is never rolled up (a device clock in the past
        // can make it old): SQLite would give its id to the next frame,
        // and frame ids must only grow for the chain and `retired`.
        let now = crate::clock::now_ms();
        super::chain::retire(
            &tx,
            "kind = 'samples' AND received_ms < ?1 AND id < (SELECT max(id) FROM frames)",
            i(cutoff_ms),
            now,
        )?;
        for table in ["samples", "sample_net", "sample_disk"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE frame IN
                     (SELECT id FROM frames WHERE kind = 'samples' AND received_ms < ?1 AND id < (SELECT max(id) FROM frames))"
                ),
                [i(cutoff_ms)],
            )?;
        }
        // Security frames and their rows are kept.
        let frames = tx.execute(
            "DELETE FROM frames WHERE kind = 'samples' AND received_ms < ?1 AND id < (SELECT max(id) FROM frames)",
            [i(cutoff_ms)],
        )?;
        tx.commit()?;
        Ok(u64::try_from(frames).unwrap_or(0))
    }
}

/// A `samples` row (frame, idx, then the columns in `export`'s order) as
/// JSON, with its key for the network rows.
pub(super) fn sample_json(r: &rusqlite::Row<'_>) -> rusqlite::Result<((i64, i64), Value)> {
    let g = |k: usize| r.get::<_, i64>(k);
    Ok((
        (g(0)?, g(1)?),
        json!({
            "time": crate::alert::rfc3339(u(g(2)?)),
            "time_ms": g(2)?,
            "interval_ms": g(3)?,
            "uptime_s": g(4)?,
            "cpu": {"user": g(5)?, "nice": g(6)?, "system": g(7)?, "idle": g(8)?,
                    "iowait": g(9)?, "irq": g(10)?, "softirq": g(11)?, "steal": g(12)?},
            "memory": {"total_kib": g(13)?, "available_kib": g(14)?,
                       "swap_total_kib": g(15)?, "swap_used_kib": g(16)?},
            "load": [g(17)? as f64 / 100.0, g(18)? as f64 / 100.0, g(19)? as f64 / 100.0],
            "processes": g(20)?,
        }),
    ))
}

/// Stores a verified frame once; `false` when (device, boot, seq) is
/// already archived or was and has been rolled up (a resend), in which
/// case nothing else is written.
pub fn store_frame(
    tx: &Connection,
    num: i64,
    v: &VerifiedFrame<'_>,
    body: Option<&Body>,
    layout: &Layout,
    received_ms: u64,
) -> Result<bool> {
    let h = v.header();
    // Stored once and rolled up since: a replay, not a new frame (SPEC §4).
    if super::chain::was_retired(tx, num, h.boot, h.seq)? {
        return Ok(false);
    }
    let kind = v.kind().map_or("unknown", |k| k.name());
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO frames(device, boot, seq, kind, time_ms, received_ms, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            num,
            h.boot,
            i(h.seq),
            kind,
            i(h.time_ms),
            i(received_ms),
            v.as_bytes()
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    if let Some(body) = body {
        let mut rows = Rows::default();
        rows.add(v, body, layout);
        rows.insert(tx, tx.last_insert_rowid())?;
    }
    Ok(true)
}

/// Of the frames a Gap names, those already in the archive: (frames,
/// samples in them). An agent names every frame its queue evicted before
/// an ack covered it, and some of those did reach the collector first.
pub fn stored_of(
    tx: &Connection,
    num: i64,
    boot: u32,
    ranges: &[(u64, u64)],
) -> Result<(u64, u64)> {
    let mut st = tx.prepare_cached(
        "SELECT count(*), coalesce(sum((SELECT count(*) FROM samples s WHERE s.frame = f.id)), 0)
         FROM frames f WHERE f.device = ?1 AND f.boot = ?2 AND f.seq >= ?3 AND f.seq < ?4",
    )?;
    let (mut frames, mut samples) = (0, 0);
    for &(first, count) in ranges {
        let (f, s): (i64, i64) = st.query_row(
            params![num, boot, i(first), i(first.saturating_add(count))],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        frames += u(f);
        samples += u(s);
    }
    Ok((frames, samples))
}

/// Interface and disk names from the Hello in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub interfaces: Vec<String>,
    pub disks: Vec<String>,
}

impl Layout {
    pub fn of(h: &Hello) -> Layout {
        Layout {
            interfaces: h.interfaces.iter().map(|i| i.name.to_string()).collect(),
            disks: h.disks.iter().map(|d| d.to_string()).collect(),
        }
    }

    pub fn from_json(v: &Value) -> Layout {
        let names = |k: &str, sub: Option<&str>| {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| match sub {
                            Some(s) => x.get(s).and_then(Value::as_str),
                            None => x.as_str(),
                        })
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        Layout {
            interfaces: names("interfaces", Some("name")),
            disks: names("disks", None),
        }
    }

    fn name(names: &[String], index: u8) -> String {
        names
            .get(usize::from(index))
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }
}

/// One socket change as stored: idx, time, snapshot, change, kind, proto,
/// local, remote, uid, process.
pub(super) type SocketRow = (
    i64,
    i64,
    bool,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
);

/// The rows one frame decodes to; built the same way at ingest and at
/// audit, so the audit compares like with like.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Rows {
    pub(super) samples: Vec<[Option<i64>; 25]>,
    pub(super) net: Vec<(i64, String, [i64; 8])>,
    pub(super) disk: Vec<(i64, String, [i64; 5])>,
    pub(super) sockets: Vec<SocketRow>,
}

pub(super) fn endpoint(e: &vigil_protocol::body::Endpoint) -> String {
    match e.addr {
        vigil_protocol::body::Addr::V4(a) => format!("{}:{}", std::net::Ipv4Addr::from(a), e.port),
        vigil_protocol::body::Addr::V6(a) => {
            format!("[{}]:{}", std::net::Ipv6Addr::from(a), e.port)
        }
    }
}

impl Rows {
    pub(super) fn clear(&mut self) {
        *self = Rows::default();
    }

    pub(super) fn add(&mut self, v: &VerifiedFrame<'_>, body: &Body, layout: &Layout) {
        match body {
            Body::Samples(batch) => {
                for (idx, s) in batch.as_slice().iter().enumerate() {
                    let idx = i64::try_from(idx).unwrap_or(0);
                    let p = s.pressure;
                    let c = s.cpu;
                    let m = s.memory;
                    self.samples.push([
                        Some(idx),
                        Some(i(s.time_ms)),
                        Some(i(s.interval_ms)),
                        Some(i(s.uptime_s)),
                        Some(i(c.user)),
                        Some(i(c.nice)),
                        Some(i(c.system)),
                        Some(i(c.idle)),
                        Some(i(c.iowait)),
                        Some(i(c.irq)),
                        Some(i(c.softirq)),
                        Some(i(c.steal)),
                        Some(i(m.total_kib)),
                        Some(i(m.available_kib)),
                        Some(i(m.swap_total_kib)),
                        Some(i(m.swap_used_kib)),
                        p.map(|p| i(p.cpu_some_ms)),
                        p.map(|p| i(p.memory_some_ms)),
                        p.map(|p| i(p.memory_full_ms)),
                        p.map(|p| i(p.io_some_ms)),
                        p.map(|p| i(p.io_full_ms)),
                        Some(i(s.load_centi[0])),
                        Some(i(s.load_centi[1])),
                        Some(i(s.load_centi[2])),
                        Some(i(s.processes)),
                    ]);
                    for n in &s.net {
                        self.net.push((
                            idx,
                            Layout::name(&layout.interfaces, n.iface),
                            [
                                n.rx_bytes,
                                n.rx_packets,
                                n.rx_errors,
                                n.rx_dropped,
                                n.tx_bytes,
                                n.tx_packets,
                                n.tx_errors,
                                n.tx_dropped,
                            ]
                            .map(i),
                        ));
                    }
                    for d in &s.disk {
                        self.disk.push((
                            idx,
                            Layout::name(&layout.disks, d.disk),
                            [d.reads, d.read_sectors, d.writes, d.write_sectors, d.io_ms].map(i),
                        ));
                    }
                }
            }
            Body::Sockets(s) => {
                for (idx, c) in s.changes.iter().enumerate() {
                    self.sockets.push((
                        i64::try_from(idx).unwrap_or(0),
                        i(v.header().time_ms),
                        s.snapshot,
                        format!("{:?}", c.change).to_lowercase(),
                        format!("{:?}", c.kind).to_lowercase(),
                        format!("{:?}", c.proto).to_lowercase(),
                        endpoint(&c.local),
                        c.remote.as_ref().map(endpoint),
                        i64::from(c.uid),
                        c.process.to_string(),
                    ));
                }
            }
            _ => {}
        }
    }

    pub(super) fn insert(&self, tx: &Connection, frame: i64) -> Result<()> {
        if !self.samples.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO samples(frame, idx, time_ms, interval_ms, uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                         ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
            )?;
            for s in &self.samples {
                let mut p: Vec<&dyn rusqlite::ToSql> = vec![&frame];
                p.extend(s.iter().map(|v| v as &dyn rusqlite::ToSql));
                st.execute(p.as_slice())?;
            }
        }
        if !self.net.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO sample_net(frame, idx, iface, rx_bytes, rx_packets, rx_errors, rx_dropped,
                    tx_bytes, tx_packets, tx_errors, tx_dropped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for (idx, iface, c) in &self.net {
                st.execute(params![
                    frame, idx, iface, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
                ])?;
            }
        }
        if !self.disk.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO sample_disk(frame, idx, disk, reads, read_sectors, writes, write_sectors, io_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (idx, disk, c) in &self.disk {
                st.execute(params![frame, idx, disk, c[0], c[1], c[2], c[3], c[4]])?;
            }
        }
        if !self.sockets.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT INTO socket_changes(frame, idx, time_ms, snapshot, change, kind, proto, local, remote, uid, process)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for s in &self.sockets {
                st.execute(params![
                    frame, s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7, s.8, s.9
                ])?;
            }
        }
        Ok(())
    }

    pub(super) fn load(conn: &Connection, frame: i64) -> Result<Rows> {
        let mut rows = Rows::default();
        let mut st = conn.prepare_cached(
            "SELECT idx, time_ms, interval_ms, uptime_s,
                    cpu_user, cpu_nice, cpu_system, cpu_idle, cpu_iowait, cpu_irq, cpu_softirq, cpu_steal,
                    mem_total_kib, mem_available_kib, swap_total_kib, swap_used_kib,
                    psi_cpu_some_ms, psi_memory_some_ms, psi_memory_full_ms, psi_io_some_ms, psi_io_full_ms,
                    load1_centi, load5_centi, load15_centi, processes
             FROM samples WHERE frame = ?1 ORDER BY idx",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut s = [None; 25];
            for (k, slot) in s.iter_mut().enumerate() {
                *slot = r.get::<_, Option<i64>>(k)?;
            }
            rows.samples.push(s);
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, iface, rx_bytes, rx_packets, rx_errors, rx_dropped, tx_bytes, tx_packets, tx_errors, tx_dropped
             FROM sample_net WHERE frame = ?1 ORDER BY idx, iface",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut c = [0i64; 8];
            for (k, slot) in c.iter_mut().enumerate() {
                *slot = r.get(k + 2)?;
            }
            rows.net.push((r.get(0)?, r.get(1)?, c));
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, disk, reads, read_sectors, writes, write_sectors, io_ms
             FROM sample_disk WHERE frame = ?1 ORDER BY idx, disk",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            let mut c = [0i64; 5];
            for (k, slot) in c.iter_mut().enumerate() {
                *slot = r.get(k + 2)?;
            }
            rows.disk.push((r.get(0)?, r.get(1)?, c));
        }
        let mut st = conn.prepare_cached(
            "SELECT idx, time_ms, snapshot, change, kind, proto, local, remote, uid, process
             FROM socket_changes WHERE frame = ?1 ORDER BY idx",
        )?;
        let mut q = st.query([frame])?;
        while let Some(r) = q.next()? {
            rows.sockets.push((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ));
        }
        Ok(rows)
    }

    pub(super) fn sort(&mut self) {
        self.net.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        self.disk.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }

    /// Names what differs (both sorted), for the audit report.
    pub(super) fn diff(&self, b: &Rows) -> String {
        let a = self;
        let mut what = Vec::new();
        if a.samples != b.samples {
            what.push("samples");
        }
        if a.net != b.net {
            what.push("sample_net");
        }
        if a.disk != b.disk {
            what.push("sample_disk");
        }
        if a.sockets != b.sockets {
            what.push("socket_changes");
        }
        what.join(", ")
    }
}
