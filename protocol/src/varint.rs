//! LEB128 varints and zigzag, as postcard encodes them; used by the packed
//! sample-delta codec. Pure functions on byte slices; never panics.

/// Appends `v` as an unsigned LEB128 varint (at most 10 bytes).
/// Returns `None` when `out` has no room.
pub(crate) fn put_u64<const N: usize>(out: &mut heapless::Vec<u8, N>, mut v: u64) -> Option<()> {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return out.push(low).ok();
        }
        out.push(low | 0x80).ok()?;
    }
}

/// Reads one unsigned LEB128 varint from the front of `input`, advancing it.
/// Rejects encodings longer than 10 bytes and those that overflow 64 bits.
pub(crate) fn take_u64(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for i in 0..10u32 {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let part = u64::from(byte & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            // A zero final byte after the first is an overlong encoding.
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = heapless::Vec::<u8, 16>::new();
            put_u64(&mut buf, v).unwrap();
            let mut s: &[u8] = &buf;
            assert_eq!(take_u64(&mut s), Some(v));
            assert!(s.is_empty());
        }
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        let mut s: &[u8] = &[0x80; 11];
        assert_eq!(take_u64(&mut s), None);
        let mut s: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(take_u64(&mut s), None);
        let mut s: &[u8] = &[0x80];
        assert_eq!(take_u64(&mut s), None);
        let mut s: &[u8] = &[0xce, 0x00];
        assert_eq!(take_u64(&mut s), None, "overlong");
    }
}
