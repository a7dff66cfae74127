//! The manifest: a signed, line-oriented list of protected files that an
//! auditor can read and diff. Parses and writes the text (SPEC.md,
//! "Manifest grammar"); the signature is a detached minisign signature over
//! the exact bytes (see `minisign`). Hashing files is the agent's job.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::body::Class;

/// First line of every manifest.
pub const MAGIC: &str = "vigil-manifest 1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub issuer: String,
    pub scope: String,
    /// Device model the manifest is for.
    pub model: String,
    /// Only grows for the same issuer and scope (rollback protection).
    pub version: u64,
    /// Seconds since the Unix epoch (written as RFC 3339 UTC).
    pub created: i64,
    /// Directories where anything not listed is a finding.
    pub exclusive: Vec<Vec<u8>>,
    /// Sorted by path bytes, no duplicates.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path under the verification root, raw bytes.
    pub path: Vec<u8>,
    pub class: Class,
    /// Permission bits including set-uid, set-gid and sticky (0..=0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64, sha256: [u8; 32] },
    Dir,
    Symlink { target: Vec<u8> },
}

/// A manifest that could not be parsed: the 1-based line and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestError {
    pub line: usize,
    pub kind: ManifestErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestErrorKind {
    /// The first line is not `vigil-manifest 1`.
    Magic,
    /// A header line is missing, repeated or out of order.
    Header,
    /// A header value is empty, has control characters or surrounding spaces.
    Value,
    /// An entry has the wrong number of fields or an unknown type.
    Entry,
    UnknownClass,
    /// Mode is not four octal digits within 07777.
    Mode,
    /// A number is not a canonical decimal that fits.
    Number,
    /// The hash is not 64 lowercase hex digits.
    Hash,
    /// A path is not absolute and normal, or has a bad escape.
    Path,
    /// Entries or exclusive directories are not strictly sorted by path.
    Order,
    /// The timestamp is not `YYYY-MM-DDTHH:MM:SSZ`.
    Time,
    /// Not UTF-8, or a carriage return, tab or other control character.
    Text,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ManifestErrorKind::Magic => "first line must be `vigil-manifest 1`",
            ManifestErrorKind::Header => "header line missing, repeated or out of order",
            ManifestErrorKind::Value => {
                "empty header value, control character or surrounding space"
            }
            ManifestErrorKind::Entry => "entry has the wrong fields",
            ManifestErrorKind::UnknownClass => "class must be firmware, model or config",
            ManifestErrorKind::Mode => "mode must be four octal digits",
            ManifestErrorKind::Number => "bad number",
            ManifestErrorKind::Hash => "sha256 must be 64 lowercase hex digits",
            ManifestErrorKind::Path => "path must be absolute, normalised and correctly escaped",
            ManifestErrorKind::Order => "paths must be strictly sorted and unique",
            ManifestErrorKind::Time => "time must be YYYY-MM-DDTHH:MM:SSZ",
            ManifestErrorKind::Text => "not UTF-8 text without control characters",
        };
        write!(f, "line {}: {what}", self.line)
    }
}

impl Manifest {
    /// Parses the manifest text. The format is canonical: for any accepted
    /// text `t`, `parse(t)?.to_text() == t`.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let text = core::str::from_utf8(bytes).map_err(|e| ManifestError {
            line: 1 + bytes
                .get(..e.valid_up_to())
                .unwrap_or(&[])
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            kind: ManifestErrorKind::Text,
        })?;
        let body = text.strip_suffix('\n').ok_or(ManifestError {
            line: text.lines().count().max(1),
            kind: ManifestErrorKind::Text,
        })?;
        let mut lines = body
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .peekable();
        let err = |line, kind| ManifestError { line, kind };
        for (n, l) in lines.clone() {
            if l.chars().any(|c| c.is_control()) {
                return Err(err(n, ManifestErrorKind::Text));
            }
        }
        match lines.next() {
            Some((_, MAGIC)) => {}
            _ => return Err(err(1, ManifestErrorKind::Magic)),
        }
        let mut header = |key: &str| -> Result<(usize, &str), ManifestError> {
            let (n, l) = lines.next().ok_or(err(0, ManifestErrorKind::Header))?;
            let v = l
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or(err(n, ManifestErrorKind::Header))?;
            if v.is_empty() || v.trim() != v {
                return Err(err(n, ManifestErrorKind::Value));
            }
            Ok((n, v))
        };
        let issuer = String::from(header("issuer")?.1);
        let scope = String::from(header("scope")?.1);
        let model = String::from(header("model")?.1);
        let (n, v) = header("version")?;
        let version = number(v).ok_or(err(n, ManifestErrorKind::Number))?;
        let (n, v) = header("created")?;
        let created = parse_time(v).ok_or(err(n, ManifestErrorKind::Time))?;
        let mut m = Manifest {
            issuer,
            scope,
            model,
            version,
            created,
            exclusive: Vec::new(),
            entries: Vec::new(),
        };
        while let Some((n, l)) = lines.next_if(|(_, l)| l.starts_with("exclusive ")) {
            let p = l
                .strip_prefix("exclusive ")
                .and_then(unescape)
                .filter(|p| normal_path(p));
            let p = p.ok_or(err(n, ManifestErrorKind::Path))?;
            if m.exclusive.last().is_some_and(|last| *last >= p) {
                return Err(err(n, ManifestErrorKind::Order));
            }
            m.exclusive.push(p);
        }
        for (n, l) in lines {
            let e = parse_entry(l).map_err(|kind| err(n, kind))?;
            if m.entries.last().is_some_and(|last| last.path >= e.path) {
                return Err(err(n, ManifestErrorKind::Order));
            }
            m.entries.push(e);
        }
        Ok(m)
    }

    /// The canonical text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "{MAGIC}")?;
        writeln!(out, "issuer {}", self.issuer)?;
        writeln!(out, "scope {}", self.scope)?;
        writeln!(out, "model {}", self.model)?;
        writeln!(out, "version {}", self.version)?;
        out.push_str("created ");
        write_time(out, self.created)?;
        out.push('\n');
        for p in &self.exclusive {
            out.push_str("exclusive ");
            escape(out, p);
            out.push('\n');
        }
        for e in &self.entries {
            let (word, class) = (e.kind.word(), e.class.name());
            write!(out, "{word} {class} {:04o} {} {}", e.mode, e.uid, e.gid)?;
            match &e.kind {
                EntryKind::File { size, sha256 } => {
                    write!(out, " {size} ")?;
                    crate::hex::write(out, sha256)?;
                }
                EntryKind::Dir => {}
                EntryKind::Symlink { target } => {
                    out.push(' ');
                    escape(out, target);
                }
            }
            out.push(' ');
            escape(out, &e.path);
            out.push('\n');
        }
        Ok(())
    }

    /// Checks that header values and paths can be written canonically (the
    /// builder's counterpart of `parse`'s checks).
    pub fn validate(&self) -> Result<(), ManifestError> {
        Manifest::parse(self.to_text().as_bytes()).map(|_| ())
    }
}

impl EntryKind {
    fn word(&self) -> &'static str {
        match self {
            EntryKind::File { .. } => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink { .. } => "link",
        }
    }
}

fn parse_entry(line: &str) -> Result<Entry, ManifestErrorKind> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (kind_word, class, mode, uid, gid, rest) = match fields.as_slice() {
        [k, c, m, u, g, rest @ ..] => (*k, *c, *m, *u, *g, rest),
        _ => return Err(ManifestErrorKind::Entry),
    };
    let class = Class::from_name(class).ok_or(ManifestErrorKind::UnknownClass)?;
    let mode = parse_mode(mode).ok_or(ManifestErrorKind::Mode)?;
    let uid = number(uid)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(ManifestErrorKind::Number)?;
    let gid = number(gid)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(ManifestErrorKind::Number)?;
    let (kind, path) = match (kind_word, rest) {
        ("file", [size, hash, path]) => {
            let size = number(size).ok_or(ManifestErrorKind::Number)?;
            let mut sha256 = [0u8; 32];
            if hash.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ManifestErrorKind::Hash);
            }
            crate::hex::decode_into(hash, &mut sha256).ok_or(ManifestErrorKind::Hash)?;
            (EntryKind::File { size, sha256 }, *path)
        }
        ("dir", [path]) => (EntryKind::Dir, *path),
        ("link", [target, path]) => {
            let target = unescape(target)
                .filter(|t| !t.is_empty())
                .ok_or(ManifestErrorKind::Path)?;
            (EntryKind::Symlink { target }, *path)
        }
        _ => return Err(ManifestErrorKind::Entry),
    };
    let path = unescape(path)
        .filter(|p| normal_path(p))
        .ok_or(ManifestErrorKind::Path)?;
    Ok(Entry {
        path,
        class,
        mode,
        uid,
        gid,
        kind,
    })
}

/// Canonical decimal: no sign, no leading zeros (except `0`), fits u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.len() != 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

/// Absolute, no empty, `.` or `..` components, no trailing slash (except `/`).
fn normal_path(p: &[u8]) -> bool {
    if p == b"/" {
        return true;
    }
    let Some(rest) = p.strip_prefix(b"/") else {
        return false;
    };
    rest.split(|&b| b == b'/')
        .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// A path as the manifest writes it (non-printable bytes as `\xHH`): safe
/// to print in a terminal or a log line.
pub fn display_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape(&mut out, bytes);
    out
}

/// Path bytes as a token: printable ASCII other than space and `\` as is,
/// `\\` for a backslash, `\xHH` for every other byte.
fn escape(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'\\' => match it.next()? {
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let (h, l) = (it.next()?, it.next()?);
                    if h.is_ascii_uppercase() || l.is_ascii_uppercase() {
                        return None;
                    }
                    let mut v = [0u8; 1];
                    let pair = [h, l];
                    crate::hex::decode_into(core::str::from_utf8(&pair).ok()?, &mut v)?;
                    let [v] = v;
                    if (0x21..=0x7e).contains(&v) {
                        return None; // written as itself (or `\\`): one spelling per path
                    }
                    out.push(v);
                }
                _ => return None,
            },
            0x21..=0x7e => out.push(b),
            _ => return None,
        }
    }
    Some(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` to seconds since the Unix epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 {
        return None;
    }
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-')
        && sep(7, b'-')
        && sep(10, b'T')
        && sep(13, b':')
        && sep(16, b':')
        && sep(19, b'Z'))
    {
        return None;
    }
    let num = |r: core::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        core::str::from_utf8(d).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Writes seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (years 0..=9999).
pub fn write_time(out: &mut impl Write, t: i64) -> fmt::Result {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}
