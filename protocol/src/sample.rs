//! Metric samples and the compact batch codec. The first sample of a batch
//! is plain postcard; every later one is packed as a bitmap of the fields
//! that changed followed by zigzag varints of those changes, against the
//! previous sample in the same frame. Counters are already interval
//! increases (computed on the device), so a steady device packs to a few
//! bytes per sample. Pure data transformation: no clocks, no I/O.

use heapless::Vec;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::varint;
use crate::MAX_FRAME_LEN;

/// Most network interfaces a device reports (inventory and samples).
pub const MAX_IFACES: usize = 8;
/// Most block devices a device reports.
pub const MAX_DISKS: usize = 8;
/// Most samples one frame carries.
pub const MAX_SAMPLES: usize = 16;

/// One reading of the device's metrics. Counters (`cpu`, `net`, `disk`,
/// `pressure`) hold the increase over the `interval_ms` before `time_ms`;
/// gauges (`memory`, `load_centi`) hold the value at `time_ms`, and
/// `processes` the count at the last process-table scan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock time of the reading, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Length of the interval the counters cover.
    pub interval_ms: u64,
    pub uptime_s: u64,
    pub cpu: CpuTicks,
    pub memory: Memory,
    /// Absent where the kernel has no pressure stall information.
    pub pressure: Option<Pressure>,
    pub net: Vec<NetCounters, MAX_IFACES>,
    pub disk: Vec<DiskCounters, MAX_DISKS>,
    /// Load averages (1, 5, 15 min) times 100.
    pub load_centi: [u64; 3],
    /// Processes at the agent's last process-table scan (every
    /// `sessions.interval_s`, 5 s by default; SPEC.md, "Samples"): the
    /// samples between two scans repeat the count.
    pub processes: u64,
}

/// CPU time by state over the interval, in clock ticks (USER_HZ, 1/100 s),
/// summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// Memory gauges in KiB, as /proc/meminfo gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
    pub swap_total_kib: u64,
    pub swap_used_kib: u64,
}

/// Pressure stall time over the interval, in milliseconds (the kernel's
/// `total=` microsecond counters, differenced on the device; the device
/// carries the sub-millisecond remainder into the next interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pressure {
    pub cpu_some_ms: u64,
    pub memory_some_ms: u64,
    pub memory_full_ms: u64,
    pub io_some_ms: u64,
    pub io_full_ms: u64,
}

/// Interface counters over the interval; `iface` indexes `Hello::interfaces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetCounters {
    pub iface: u8,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Block-device counters over the interval; `disk` indexes `Hello::disks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskCounters {
    pub disk: u8,
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub io_ms: u64,
}

const NET_FIELDS: usize = 8;
const DISK_FIELDS: usize = 5;
const PRESSURE_FIELDS: usize = 5;
const MAX_FIELDS: usize =
    3 + 8 + 4 + PRESSURE_FIELDS + MAX_IFACES * NET_FIELDS + MAX_DISKS * DISK_FIELDS + 3 + 1;
/// Index of `time_ms` in the field vector. On the wire every sample's time
/// is its age before the frame's `Header::time_ms` (see `Samples::to_ages`),
/// predicted as the previous age minus this sample's interval, so a
/// punctual tick packs to nothing.
const TIME_FIELD: usize = 1;

type Fields = Vec<u64, MAX_FIELDS>;

impl Sample {
    /// Same pressure presence, interfaces and disks in the same order: the
    /// condition for packing one sample against another.
    pub fn same_shape(&self, other: &Sample) -> bool {
        self.pressure.is_some() == other.pressure.is_some()
            && self.net.len() == other.net.len()
            && self.disk.len() == other.disk.len()
            && self
                .net
                .iter()
                .zip(&other.net)
                .all(|(a, b)| a.iface == b.iface)
            && self
                .disk
                .iter()
                .zip(&other.disk)
                .all(|(a, b)| a.disk == b.disk)
    }

    fn fields(&self) -> Fields {
        let mut f = Fields::new();
        let c = &self.cpu;
        let m = &self.memory;
        let mut put = |vals: &[u64]| {
            // Capacity covers the largest shape; cannot fail.
            let _ = f.extend_from_slice(vals);
        };
        put(&[self.interval_ms, self.time_ms, self.uptime_s]);
        put(&[
            c.user, c.nice, c.system, c.idle, c.iowait, c.irq, c.softirq, c.steal,
        ]);
        put(&[
            m.total_kib,
            m.available_kib,
            m.swap_total_kib,
            m.swap_used_kib,
        ]);
        if let Some(p) = &self.pressure {
            put(&[
                p.cpu_some_ms,
                p.memory_some_ms,
                p.memory_full_ms,
                p.io_some_ms,
                p.io_full_ms,
            ]);
        }
        for n in &self.net {
            put(&[
                n.rx_bytes,
                n.rx_packets,
                n.rx_errors,
                n.rx_dropped,
                n.tx_bytes,
                n.tx_packets,
                n.tx_errors,
                n.tx_dropped,
            ]);
        }
        for d in &self.disk {
            put(&[d.reads, d.read_sectors, d.writes, d.write_sectors, d.io_ms]);
        }
        put(&self.load_centi);
        put(&[self.processes]);
        f
    }

    /// Rebuilds a sample of `shape`'s shape from a field vector made by `fields`.
    fn from_fields(shape: &Sample, f: &[u64]) -> Option<Sample> {
        let mut it = f.iter().copied();
        let mut next = || it.next();
        let mut s = Sample {
            interval_ms: next()?,
            time_ms: next()?,
            uptime_s: next()?,
            ..Sample::default()
        };
        s.cpu = CpuTicks {
            user: next()?,
            nice: next()?,
            system: next()?,
            idle: next()?,
            iowait: next()?,
            irq: next()?,
            softirq: next()?,
            steal: next()?,
        };
        s.memory = Memory {
            total_kib: next()?,
            available_kib: next()?,
            swap_total_kib: next()?,
            swap_used_kib: next()?,
        };
        if shape.pressure.is_some() {
            s.pressure = Some(Pressure {
                cpu_some_ms: next()?,
                memory_some_ms: next()?,
                memory_full_ms: next()?,
                io_some_ms: next()?,
                io_full_ms: next()?,
            });
        }
        for n in &shape.net {
            let c = NetCounters {
                iface: n.iface,
                rx_bytes: next()?,
                rx_packets: next()?,
                rx_errors: next()?,
                rx_dropped: next()?,
                tx_bytes: next()?,
                tx_packets: next()?,
                tx_errors: next()?,
                tx_dropped: next()?,
            };
            s.net.push(c).ok()?;
        }
        for d in &shape.disk {
            let c = DiskCounters {
                disk: d.disk,
                reads: next()?,
                read_sectors: next()?,
                writes: next()?,
                write_sectors: next()?,
                io_ms: next()?,
            };
            s.disk.push(c).ok()?;
        }
        s.load_centi = [next()?, next()?, next()?];
        s.processes = next()?;
        Some(s)
    }
}

/// A batch of one or more samples of the same shape, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    items: Vec<Sample, MAX_SAMPLES>,
}

/// Why a sample could not join a batch; the sample comes back.
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchError {
    Full(Sample),
    /// Different interfaces, disks or pressure presence: start a new batch.
    ShapeChanged(Sample),
}

impl Samples {
    pub fn new(first: Sample) -> Self {
        let mut items = Vec::new();
        // A fresh Vec has room for one.
        let _ = items.push(first);
        Self { items }
    }

    // The sample is handed back so the caller can start the next batch with it.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, s: Sample) -> Result<(), BatchError> {
        match self.items.first() {
            Some(first) if !first.same_shape(&s) => Err(BatchError::ShapeChanged(s)),
            _ => self.items.push(s).map_err(BatchError::Full),
        }
    }

    pub fn as_slice(&self) -> &[Sample] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Replaces each `time_ms` by `frame_ms - time_ms` (wrapping): turns
    /// wall-clock times into ages before the frame's time, the form the wire
    /// carries, and ages back into wall-clock times.
    pub(crate) fn mirror_times(&mut self, frame_ms: u64) {
        for s in &mut self.items {
            s.time_ms = frame_ms.wrapping_sub(s.time_ms);
        }
    }

    /// Packs every sample after the first against its predecessor.
    fn pack(&self) -> Option<Vec<u8, MAX_FRAME_LEN>> {
        let mut out = Vec::new();
        let rest = self.items.get(1..).unwrap_or(&[]);
        varint::put_u64(&mut out, rest.len() as u64)?;
        let mut prev = self.items.first()?.fields();
        for s in rest {
            let cur = s.fields();
            let mut bitmap = [0u8; MAX_FIELDS.div_ceil(8)];
            let mut deltas = Vec::<u64, MAX_FIELDS>::new();
            for (i, (&c, &p)) in cur.iter().zip(prev.iter()).enumerate() {
                let d = c.wrapping_sub(predict(i, p, &cur)) as i64;
                if d != 0 {
                    *bitmap.get_mut(i / 8)? |= 1 << (i % 8);
                    deltas.push(varint::zigzag(d)).ok()?;
                }
            }
            out.extend_from_slice(bitmap.get(..cur.len().div_ceil(8))?)
                .ok()?;
            for d in deltas {
                varint::put_u64(&mut out, d)?;
            }
            prev = cur;
        }
        Some(out)
    }

    fn unpack(first: Sample, mut packed: &[u8]) -> Option<Self> {
        let count = varint::take_u64(&mut packed)?;
        if count >= MAX_SAMPLES as u64 {
            return None;
        }
        let mut prev = first.fields();
        let n = prev.len();
        let mut items = Vec::<Sample, MAX_SAMPLES>::new();
        items.push(first).ok()?;
        for _ in 0..count {
            let (bitmap, rest) = packed.split_at_checked(n.div_ceil(8))?;
            packed = rest;
            if n % 8 != 0 && bitmap.last()? >> (n % 8) != 0 {
                return None; // bits beyond the last field must be clear
            }
            let mut cur = Fields::new();
            for i in 0..n {
                let p = *prev.get(i)?;
                let predicted = predict(i, p, &cur);
                let value = if bitmap.get(i / 8)? & (1 << (i % 8)) != 0 {
                    let z = varint::take_u64(&mut packed)?;
                    if z == 0 {
                        return None; // a set bit must carry a change: one encoding only
                    }
                    predicted.wrapping_add(varint::unzigzag(z) as u64)
                } else {
                    predicted
                };
                cur.push(value).ok()?;
            }
            items
                .push(Sample::from_fields(items.first()?, &cur)?)
                .ok()?;
            prev = cur;
        }
        if !packed.is_empty() {
            return None;
        }
        Some(Self { items })
    }
}

/// The value field `i` is expected to have, given the previous sample's
/// value `p` and the fields of the current sample decoded so far.
fn predict(i: usize, p: u64, cur: &[u64]) -> u64 {
    match (i, cur.first()) {
        (TIME_FIELD, Some(&interval)) => p.wrapping_sub(interval),
        _ => p,
    }
}

impl Serialize for Samples {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let first = self
            .items
            .first()
            .ok_or_else(|| S::Error::custom("empty batch"))?;
        let packed = self
            .pack()
            .ok_or_else(|| S::Error::custom("batch too large"))?;
        let mut t = ser.serialize_tuple(2)?;
        t.serialize_element(first)?;
        t.serialize_element(&Bytes(&packed))?;
        t.end()
    }
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Samples;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("a sample batch")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Samples, A::Error> {
                let first: Sample = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let packed: &'de [u8] = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Samples::unpack(first, packed)
                    .ok_or_else(|| de::Error::custom("bad packed samples"))
            }
        }
        de.deserialize_tuple(2, V)
    }
}
