//! Lowercase hex for ids and hashes. Never panics.

/// Decodes exactly `out.len()` bytes of hex (either case) from `s`.
pub(crate) fn decode_into(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Writes `bytes` as lowercase hex.
pub(crate) fn write(f: &mut impl core::fmt::Write, bytes: &[u8]) -> core::fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}
