//! `/proc/loadavg`: the three load averages, kept as hundredths.

use super::Issue;

const FILE: &str = "/proc/loadavg";

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> Option<[u64; 3]> {
    let mut f = text.split_ascii_whitespace();
    let mut out = [0u64; 3];
    for slot in &mut out {
        *slot = match f.next().and_then(centi) {
            Some(v) => v,
            None => {
                issues.push(Issue::new(FILE, "load average is not a decimal number"));
                return None;
            }
        };
    }
    Some(out)
}

/// "2.63" -> 263, without going through floating point.
fn centi(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int: u64 = int.parse().ok()?;
    let mut digits = frac.bytes();
    let mut d = || {
        digits
            .next()
            .map_or(Some(0), |b| b.is_ascii_digit().then(|| u64::from(b - b'0')))
    };
    let (a, b) = (d()?, d()?);
    int.checked_mul(100)?.checked_add(a * 10 + b)
}
