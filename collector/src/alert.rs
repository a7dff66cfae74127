//! Alerts and audit events: the rule catalogue, and the three formats the
//! SOC receives (JSON lines, RFC 5424 syslog with structured data, ArcSight
//! CEF). Formatting only: delivery is `sink`, persistence is `store`.

use std::fmt::Write as _;

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }

    /// RFC 5424 severity (0 emergency .. 7 debug).
    fn syslog(self) -> u8 {
        match self {
            Severity::Critical => 2,
            Severity::High => 3,
            Severity::Medium => 4,
            Severity::Low => 5,
            Severity::Info => 6,
        }
    }

    /// CEF severity 0..10.
    fn cef(self) -> u8 {
        match self {
            Severity::Info => 1,
            Severity::Low => 3,
            Severity::Medium => 5,
            Severity::High => 8,
            Severity::Critical => 10,
        }
    }
}

/// A detection rule: stable id, default severity, one-line title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    pub title: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $sev:ident, $title:literal;)*) => {
        $(pub const $name: Rule = Rule { id: $id, severity: Severity::$sev, title: $title };)*
        /// Every rule this build raises.
        pub const RULES: &[Rule] = &[$($name),*];
    };
}

rules! {
    BAD_SIGNATURE = "transport.bad-signature", High, "frame signature does not verify against the device key";
    REPLAY = "transport.replay", High, "replayed or out-of-order frame rejected";
    SEQUENCE_LOSS = "transport.sequence-loss", Medium, "frames missing from the sequence and not explained";
    AGENT_GAP = "transport.agent-gap", Medium, "the agent dropped telemetry (queue overflow)";
    OUT_OF_RANGE = "transport.out-of-range", Medium, "a verified frame numbered or dated beyond what the archive holds (refused, never acknowledged)";
    MALFORMED = "transport.malformed", Low, "verified frame with a body that does not decode";
    UNKNOWN_DEVICE = "enrollment.unknown-device", Medium, "frames from a device that is not enrolled";
    PENDING_DEVICE = "enrollment.pending", Low, "a new device asks to be enrolled";
    PENDING_LIMIT = "enrollment.pending-limit", Medium, "too many devices pending enrollment";
    UNKNOWN_PRESSURE = "enrollment.unknown-pressure", Medium, "many Hellos from keys nobody enrolled: attempts beyond the per-address or shared budget are refused unverified";
    REVOKED_DEVICE = "enrollment.revoked-device", High, "frames from a revoked device";
    REBOOT = "device.reboot", Info, "the device rebooted";
    AGENT_RESTART = "device.agent-restart", Info, "the agent restarted without a reboot";
    SILENCE = "device.silence", Medium, "no telemetry from the device";
    FLOOD = "device.flood", High, "the device sends more than its frame or byte budget: its connections are slowed (a compromised device, or a broken agent)";
    INTEGRITY = "integrity.finding", High, "files differ from the signed manifest";
    MANIFEST_GONE = "integrity.manifest-missing", High, "a manifest the device checked before is no longer in force there";
    MANIFEST_ROLLBACK = "integrity.manifest-rollback", High, "the device runs an older version of a manifest than it ran before";
    POSTURE = "posture.fail", Medium, "a hardening check failed";
    METRIC_DEVIATION = "baseline.metric-deviation", Medium, "a metric far outside the approved baseline";
    METRIC_SHIFT = "baseline.metric-shift", Medium, "a metric's level moved outside the approved baseline and stays there";
    METRIC_CHANGE = "baseline.metric-change", Medium, "a metric changed sharply against its own recent behaviour (a new extreme, level or daily pattern), though the approved baseline allows it";
    EGRESS_VOLUME = "network.egress-volume", High, "data sent far above the approved baseline (possible exfiltration)";
    NEW_LISTENER = "network.new-listener", Medium, "a listening socket that is not in the approved baseline";
    NEW_OUTBOUND = "network.new-outbound", Medium, "an outbound endpoint that is not in the approved baseline or allow-list";
    LATERAL_MOVEMENT = "network.lateral-movement", High, "the device connected to an internal host on a remote-admin or file-sharing port";
    INTERNET_INBOUND = "network.internet-inbound", High, "an inbound connection from outside the hospital's networks";
    INSECURE_SERVICE = "service.insecure-listener", High, "a cleartext service (telnet, FTP, plain HTTP, r-services) is listening";
    KERNEL_CHANGED = "device.kernel-changed", Medium, "the device runs a kernel the approved baseline did not see";
    MANIFEST_CHANGED = "device.manifest-changed", Medium, "a signed manifest version differs from the approved baseline";
    CLOCK_SKEW = "device.clock-skew", Medium, "the device's clock is far from the collector's (its times are kept as sent; retention goes by receive time)";
    UNEXPECTED_REBOOT = "device.unexpected-reboot", Medium, "the device rebooted more often than during the baseline";
    BASELINE_READY = "baseline.ready-for-review", Info, "the baseline period ended: review and approve the baseline";
    ACCESS_OUTSIDE_POLICY = "access.outside-policy", High, "a login or privileged session the access policy does not allow";
    ACCESS_ROOT = "access.root-session", Info, "a root session on the device (root login, su or sudo)";
    ACCESS_OVERSTAY = "access.overstay", Medium, "a session still open after its access window ended";
    ACCESS_LOG_TAMPERED = "access.log-tampered", High, "login records on the device vanished or changed";
    ARCHIVE_WRITE_FAILED = "collector.archive-write-failed", High, "the collector cannot write its archive (disk full?): nothing is acknowledged until it can";
    ARCHIVE_LOSS = "collector.archive-loss", High, "frames the collector acknowledged are no longer in its archive (a damaged WAL cut off in recovery, or an older archive restored)";
}

/// One occurrence of a rule, before it is merged into an alert.
#[derive(Debug, Clone)]
pub struct Raise {
    pub rule: Rule,
    /// Hex device id, or the empty string when the sender is not a device
    /// we can name (a peer address goes in the evidence).
    pub device: String,
    /// Occurrences with the same (device, rule, dedup) update one alert.
    pub dedup: String,
    pub evidence: Value,
    pub time_ms: u64,
}

impl Raise {
    pub fn new(
        rule: Rule,
        device: impl Into<String>,
        dedup: impl Into<String>,
        evidence: Value,
        time_ms: u64,
    ) -> Self {
        Raise {
            rule,
            device: device.into(),
            dedup: dedup.into(),
            evidence,
            time_ms,
        }
    }
}

/// An alert as stored and emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: i64,
    pub device: String,
    pub device_name: Option<String>,
    pub rule: String,
    pub severity: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub count: u64,
    pub evidence: Value,
    pub state: String,
}

impl Alert {
    pub fn to_json(&self) -> Value {
        json!({
            "type": "alert",
            "id": self.id,
            "device": self.device,
            "device_name": self.device_name,
            "rule": self.rule,
            "title": title(&self.rule),
            "severity": self.severity,
            "first_seen": rfc3339(self.first_seen_ms),
            "last_seen": rfc3339(self.last_seen_ms),
            "count": self.count,
            "state": self.state,
            "evidence": self.evidence,
        })
    }
}

pub fn title(rule: &str) -> &'static str {
    RULES.iter().find(|r| r.id == rule).map_or("", |r| r.title)
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let mut s = String::new();
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let _ = vigil_protocol::manifest::write_time(&mut s, secs);
    // write_time ends in 'Z'; insert the milliseconds before it.
    s.pop();
    let _ = write!(s, ".{:03}Z", ms % 1000);
    s
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ`, the same with `.mmm` milliseconds, or a
/// date `YYYY-MM-DD` (midnight UTC), to ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let (whole, ms) = match s.len() {
        10 => (format!("{s}T00:00:00Z"), 0),
        24 if s.get(19..20) == Some(".") && s.ends_with('Z') => {
            let frac = s.get(20..23)?;
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (format!("{}Z", s.get(..19)?), frac.parse::<u64>().ok()?)
        }
        _ => (s.to_string(), 0),
    };
    let secs = vigil_protocol::manifest::parse_time(&whole)?;
    u64::try_from(secs).ok()?.checked_mul(1000)?.checked_add(ms)
}

/// The event's severity for syslog/CEF: alerts carry theirs, audit events
/// are notices.
fn event_severity(event: &Value) -> Severity {
    event
        .get("severity")
        .and_then(Value::as_str)
        .and_then(Severity::from_name)
        .unwrap_or(Severity::Low)
}

fn str_field<'a>(event: &'a Value, key: &str) -> &'a str {
    event.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Escapes an RFC 5424 SD-PARAM value: `"`, `\` and `]` get a backslash.
pub fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// IANA's example private enterprise number (RFC 5612), used for our
/// SD-ID until Vigil has its own.
pub const SD_ID: &str = "vigil@32473";

/// Facility 13 ("log audit") for audit events, 4 ("security/auth") for alerts.
pub fn syslog_5424(event: &Value, hostname: &str, pid: u32, time_ms: u64) -> String {
    let audit = str_field(event, "type") == "audit";
    let facility: u8 = if audit { 13 } else { 4 };
    let pri = u16::from(facility) * 8 + u16::from(event_severity(event).syslog());
    let msgid = if audit { "audit" } else { "alert" };
    let mut sd = format!("[{SD_ID}");
    let params: &[&str] = if audit {
        &["id", "actor", "action", "target"]
    } else {
        &[
            "id",
            "device",
            "device_name",
            "rule",
            "severity",
            "state",
            "count",
            "first_seen",
            "last_seen",
        ]
    };
    for k in params {
        let v = match event.get(*k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => continue,
            Some(other) => other.to_string(),
        };
        let _ = write!(sd, " {k}=\"{}\"", sd_escape(&v));
    }
    sd.push(']');
    let msg = summary(event);
    format!(
        "<{pri}>1 {} {} vigil-collector {pid} {msgid} {sd} {msg}",
        rfc3339(time_ms),
        if hostname.is_empty() { "-" } else { hostname },
    )
}

/// One readable line: what happened, to which device, with the evidence.
pub fn summary(event: &Value) -> String {
    if str_field(event, "type") == "audit" {
        format!(
            "audit: {} {} {} {}",
            str_field(event, "actor"),
            str_field(event, "action"),
            str_field(event, "target"),
            event
                .get("detail")
                .map(Value::to_string)
                .unwrap_or_default()
        )
    } else {
        let name = str_field(event, "device_name");
        let device = str_field(event, "device");
        format!(
            "{} [{}] {}{}: {} evidence={}",
            str_field(event, "rule"),
            str_field(event, "severity"),
            if device.is_empty() { "-" } else { device },
            if name.is_empty() {
                String::new()
            } else {
                format!(" ({name})")
            },
            str_field(event, "title"),
            event
                .get("evidence")
                .map(Value::to_string)
                .unwrap_or_default()
        )
    }
}

/// CEF header fields escape `\` and `|`.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// CEF extension values escape `\`, `=` and line breaks.
pub fn cef_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// ArcSight CEF:0 line for an alert or audit event.
pub fn cef(event: &Value) -> String {
    let audit = str_field(event, "type") == "audit";
    let (sig, name) = if audit {
        (
            format!("audit.{}", str_field(event, "action")),
            "administrative action".to_string(),
        )
    } else {
        (
            str_field(event, "rule").to_string(),
            str_field(event, "title").to_string(),
        )
    };
    let mut ext = Vec::new();
    let mut push = |k: &str, v: String| {
        if !v.is_empty() {
            ext.push(format!("{k}={}", cef_value(&v)));
        }
    };
    let ms = |k: &str| {
        event
            .get(k)
            .and_then(Value::as_str)
            .and_then(parse_rfc3339)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    push(
        "externalId",
        event.get("id").map(Value::to_string).unwrap_or_default(),
    );
    if audit {
        push("suser", str_field(event, "actor").to_string());
        push("act", str_field(event, "action").to_string());
        push("duid", str_field(event, "target").to_string());
        push("rt", ms("time"));
        push(
            "msg",
            event
                .get("detail")
                .map(Value::to_string)
                .unwrap_or_default(),
        );
    } else {
        push("deviceExternalId", str_field(event, "device").to_string());
        push("dvchost", str_field(event, "device_name").to_string());
        push("start", ms("first_seen"));
        push("end", ms("last_seen"));
        push(
            "cnt",
            event.get("count").map(Value::to_string).unwrap_or_default(),
        );
        push("outcome", str_field(event, "state").to_string());
        push("cs1Label", "evidence".to_string());
        push(
            "cs1",
            event
                .get("evidence")
                .map(Value::to_string)
                .unwrap_or_default(),
        );
    }
    format!(
        "CEF:0|Vigil|vigil-collector|{}|{}|{}|{}|{}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&sig),
        cef_header(&name),
        event_severity(event).cef(),
        ext.join(" ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn alert() -> Value {
        Alert {
            id: 7,
            device: "00e43fa0bc9cae49".into(),
            device_name: Some("ct|scanner=7 \"east]".into()),
            rule: INTEGRITY.id.into(),
            severity: "high".into(),
            first_seen_ms: 1_795_948_000_123,
            last_seen_ms: 1_795_948_060_000,
            count: 3,
            evidence: json!({"path": "/usr/bin/a=b\\c\nd"}),
            state: "open".into(),
        }
        .to_json()
    }

    #[test]
    fn rfc3339_round_trips_seconds() {
        assert_eq!(rfc3339(1_795_948_000_123), "2026-11-29T10:26:40.123Z");
        assert_eq!(
            parse_rfc3339("2026-11-29T10:26:40Z"),
            Some(1_795_948_000_000)
        );
        assert_eq!(parse_rfc3339("2026-11-29"), Some(1_795_910_400_000));
        assert_eq!(
            parse_rfc3339("2026-11-29T10:26:40.123Z"),
            Some(1_795_948_000_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn syslog_structured_data_is_escaped() {
        let line = syslog_5424(&alert(), "collector1", 42, 1_795_948_000_000);
        assert!(line.starts_with("<35>1 2026-11-29T10:26:40.000Z collector1 vigil-collector 42 alert [vigil@32473 id=\"7\""), "{line}");
        assert!(
            line.contains(r#"device_name="ct|scanner=7 \"east\]""#),
            "{line}"
        );
        assert!(line.contains("rule=\"integrity.finding\""), "{line}");
    }

    #[test]
    fn cef_escapes_header_and_extension() {
        let line = cef(&alert());
        assert!(line.starts_with("CEF:0|Vigil|vigil-collector|"), "{line}");
        assert!(
            line.contains("|integrity.finding|files differ from the signed manifest|8|"),
            "{line}"
        );
        assert!(line.contains(r"dvchost=ct|scanner\=7 "), "{line}");
        // The evidence JSON has a backslash-escaped backslash and \n; CEF
        // escapes each backslash again and the `=`.
        assert!(
            line.contains(r#"cs1={"path":"/usr/bin/a\=b\\\\c\\nd"}"#),
            "{line}"
        );
        assert!(
            line.contains("start=1795948000123 end=1795948060000 cnt=3"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
