//! `/proc/uptime`: seconds since boot (the first field).

use super::Issue;

const FILE: &str = "/proc/uptime";

pub fn parse(text: &str, issues: &mut Vec<Issue>) -> Option<u64> {
    let first = text.split_ascii_whitespace().next();
    match first
        .and_then(|s| s.split('.').next())
        .map(str::parse::<u64>)
    {
        Some(Ok(v)) => Some(v),
        _ => {
            issues.push(Issue::new(FILE, "first field is not a number of seconds"));
            None
        }
    }
}
