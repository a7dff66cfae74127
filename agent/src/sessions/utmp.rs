//! The classic binary login records (`utmp`, `wtmp`): fixed-size records
//! in the glibc layout, with 32-bit time fields (384 bytes: every glibc
//! target, including 64-bit ones, keeps them for compatibility) or 64-bit
//! ones (400 bytes: some 64-bit libcs). Pure: bytes in, records out.

use vigil_protocol::body::Addr;

/// `ut_type` values (`<utmp.h>`).
pub const BOOT_TIME: i16 = 2;
pub const LOGIN_PROCESS: i16 = 6;
pub const USER_PROCESS: i16 = 7;
pub const DEAD_PROCESS: i16 = 8;
/// Highest valid `ut_type` (`ACCOUNTING`).
const MAX_TYPE: i16 = 9;

/// Record layout: which width the time fields have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `ut_session` and `ut_tv` as 32-bit fields: 384 bytes.
    Time32,
    /// `ut_session` and `ut_tv` as 64-bit fields: 400 bytes.
    Time64,
}

impl Layout {
    pub fn size(self) -> usize {
        match self {
            Layout::Time32 => 384,
            Layout::Time64 => 400,
        }
    }

    /// Offsets of `ut_tv.tv_sec` and `ut_addr_v6`.
    fn offsets(self) -> (usize, usize) {
        match self {
            Layout::Time32 => (340, 348),
            Layout::Time64 => (344, 360),
        }
    }
}

/// One login record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: i16,
    pub pid: u32,
    /// `pts/0`, `ttyS0`, ...
    pub line: String,
    pub user: String,
    /// The remote host as the login program wrote it (name or address).
    pub host: String,
    pub time_s: u64,
    /// `ut_addr_v6`; `None` when all zero.
    pub addr: Option<Addr>,
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or(&[])).into_owned()
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes one record of `layout`; `None` when it is not a plausible one
/// (type out of range, negative time).
pub fn record(b: &[u8], layout: Layout) -> Option<Record> {
    if b.len() < layout.size() {
        return None;
    }
    let kind = i16_at(b, 0)?;
    if !(0..=MAX_TYPE).contains(&kind) {
        return None;
    }
    let (tv, addr_at) = layout.offsets();
    let time = match layout {
        // A signed 32-bit field read as unsigned: glibc's time32 records
        // stay valid past 2038 this way.
        Layout::Time32 => i64::from(u32_at(b, tv)?),
        Layout::Time64 => i64_at(b, tv)?,
    };
    let time_s = u64::try_from(time).ok()?;
    let a = b.get(addr_at..addr_at + 16)?;
    let addr = if a.iter().all(|&x| x == 0) {
        None
    } else if a.get(4..).is_some_and(|r| r.iter().all(|&x| x == 0)) {
        Some(Addr::V4(a.get(..4)?.try_into().ok()?))
    } else {
        Some(Addr::V6(a.try_into().ok()?))
    };
    Some(Record {
        kind,
        pid: u32_at(b, 4)?,
        line: text(b.get(8..40)?),
        user: text(b.get(44..76)?),
        host: text(b.get(76..332)?),
        time_s,
        addr,
    })
}

/// Guesses the layout of a whole file: the one under which more records
/// decode (a file of the other layout misaligns from the second record
/// on). Ties, and an empty file, go to the glibc layout.
pub fn detect(bytes: &[u8]) -> Layout {
    let score = |l: Layout| {
        bytes
            .chunks_exact(l.size())
            .take(64)
            .filter(|r| record(r, l).is_some_and(|r| r.kind != 0 || r.time_s == 0))
            .count()
    };
    let (s32, s64) = (score(Layout::Time32), score(Layout::Time64));
    let whole = |l: Layout| bytes.len() % l.size() == 0;
    if s64 > s32 || (s64 == s32 && whole(Layout::Time64) && !whole(Layout::Time32)) {
        Layout::Time64
    } else {
        Layout::Time32
    }
}

/// Every whole record of `bytes`; the second value counts records that do
/// not decode, the third the bytes of a trailing partial record.
pub fn parse(bytes: &[u8], layout: Layout) -> (Vec<Record>, usize, usize) {
    let chunks = bytes.chunks_exact(layout.size());
    let partial = chunks.remainder().len();
    let mut bad = 0;
    let records = chunks
        .filter_map(|c| {
            let r = record(c, layout);
            bad += usize::from(r.is_none());
            r
        })
        .collect();
    (records, bad, partial)
}

/// Encodes a record (tests, fixtures).
pub fn encode(r: &Record, layout: Layout) -> Vec<u8> {
    let mut b = vec![0u8; layout.size()];
    let put = |b: &mut [u8], at: usize, v: &[u8], max: usize| {
        let n = v.len().min(max);
        if let (Some(dst), Some(src)) = (b.get_mut(at..at + n), v.get(..n)) {
            dst.copy_from_slice(src);
        }
    };
    put(&mut b, 0, &r.kind.to_ne_bytes(), 2);
    put(&mut b, 4, &r.pid.to_ne_bytes(), 4);
    put(&mut b, 8, r.line.as_bytes(), 32);
    put(&mut b, 44, r.user.as_bytes(), 32);
    put(&mut b, 76, r.host.as_bytes(), 256);
    let (tv, addr_at) = layout.offsets();
    match layout {
        Layout::Time32 => put(&mut b, tv, &(r.time_s as u32).to_ne_bytes(), 4),
        Layout::Time64 => put(&mut b, tv, &(r.time_s as i64).to_ne_bytes(), 8),
    }
    match r.addr {
        Some(Addr::V4(a)) => put(&mut b, addr_at, &a, 4),
        Some(Addr::V6(a)) => put(&mut b, addr_at, &a, 16),
        None => {}
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: i16, pid: u32, line: &str, user: &str, t: u64) -> Record {
        Record {
            kind,
            pid,
            line: line.into(),
            user: user.into(),
            host: "10.1.0.5".into(),
            time_s: t,
            addr: Some(Addr::V4([10, 1, 0, 5])),
        }
    }

    #[test]
    fn both_layouts_round_trip_and_are_told_apart() {
        for layout in [Layout::Time32, Layout::Time64] {
            let rs = [
                rec(USER_PROCESS, 41, "pts/0", "vendor", 1_800_000_000),
                rec(DEAD_PROCESS, 41, "pts/0", "", 1_800_000_060),
                rec(USER_PROCESS, 77, "ttyS0", "root", 4_000_000_000),
            ];
            let bytes: Vec<u8> = rs.iter().flat_map(|r| encode(r, layout)).collect();
            assert_eq!(detect(&bytes), layout);
            let (got, bad, partial) = parse(&bytes, layout);
            assert_eq!((bad, partial), (0, 0));
            assert_eq!(got, rs.to_vec());
        }
    }

    #[test]
    fn garbage_and_partial_records_are_counted_not_decoded() {
        let mut bytes = encode(&rec(USER_PROCESS, 1, "pts/1", "a", 5), Layout::Time32);
        bytes.extend(std::iter::repeat(0x7f).take(384)); // type 0x7f7f
        bytes.extend([1, 2, 3]);
        let (got, bad, partial) = parse(&bytes, Layout::Time32);
        assert_eq!((got.len(), bad, partial), (1, 1, 3));
        assert_eq!(detect(&[]), Layout::Time32);
        assert!(record(&[0; 10], Layout::Time32).is_none());
    }
}
