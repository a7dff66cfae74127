//! Frame bodies: what a device says (`Hello`, `Samples`, `Sockets`,
//! `Integrity`, `Posture`, `Gap`, `Heartbeat`). Plain data with bounded
//! capacities; encoding rules live in `frame` and `sample`. Variants are
//! append-only: a new kind of body is a new variant at the end.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::sample::Samples;

pub use crate::sample::{MAX_DISKS, MAX_IFACES};
/// Most manifests in force at once.
pub const MAX_MANIFESTS: usize = 8;
/// Most socket changes in one `Sockets` frame.
pub const MAX_SOCKET_CHANGES: usize = 48;
/// Most findings in one `Integrity` frame.
pub const MAX_FINDINGS: usize = 24;
/// Most check results in one `Posture` frame.
pub const MAX_CHECKS: usize = 24;
/// Longest path a finding carries, in bytes.
pub const MAX_PATH: usize = 256;
/// Most dropped-sequence ranges one `Gap` names.
pub const MAX_GAP_RANGES: usize = 32;
/// Most session events in one `Sessions` frame (a full one still fits
/// `MAX_FRAME_LEN`: tested).
pub const MAX_SESSION_EVENTS: usize = 12;

/// Everything a device can send. The variant index is the wire tag.
// Bounded inline storage (no allocator on a microcontroller) makes `Samples`
// the big variant; hosts keep bodies on the heap where that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Hello(Hello),
    Samples(Samples),
    Sockets(Sockets),
    Integrity(Integrity),
    Posture(Posture),
    Gap(Gap),
    Heartbeat(Heartbeat),
    Sessions(Sessions),
}

/// The body's kind without its content, e.g. for `Gap` records and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BodyKind {
    Hello,
    Samples,
    Sockets,
    Integrity,
    Posture,
    Gap,
    Heartbeat,
    Sessions,
}

impl Body {
    pub fn kind(&self) -> BodyKind {
        match self {
            Body::Hello(_) => BodyKind::Hello,
            Body::Samples(_) => BodyKind::Samples,
            Body::Sockets(_) => BodyKind::Sockets,
            Body::Integrity(_) => BodyKind::Integrity,
            Body::Posture(_) => BodyKind::Posture,
            Body::Gap(_) => BodyKind::Gap,
            Body::Heartbeat(_) => BodyKind::Heartbeat,
            Body::Sessions(_) => BodyKind::Sessions,
        }
    }
}

impl BodyKind {
    /// Security frames are never evicted by routine ones (DESIGN principle 3).
    pub fn is_security(self) -> bool {
        !matches!(self, BodyKind::Samples | BodyKind::Heartbeat)
    }

    pub fn name(self) -> &'static str {
        match self {
            BodyKind::Hello => "hello",
            BodyKind::Samples => "samples",
            BodyKind::Sockets => "sockets",
            BodyKind::Integrity => "integrity",
            BodyKind::Posture => "posture",
            BodyKind::Gap => "gap",
            BodyKind::Heartbeat => "heartbeat",
            BodyKind::Sessions => "sessions",
        }
    }
}

/// Inventory, sent first in every sequence space and again when it changes.
/// `Samples` refer to interfaces and disks by their index in the latest
/// `Hello` of the same boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The device's ed25519 public key. The frame's `device` is its
    /// fingerprint, so a collector that does not know the device yet can
    /// check that the `Hello` is self-signed (`SignedFrame::verify_hello`)
    /// and hold it as pending enrollment.
    pub public_key: [u8; 32],
    pub agent_version: String<24>,
    pub hostname: String<64>,
    pub kernel_release: String<64>,
    /// `PRETTY_NAME` from os-release.
    pub os_release: String<96>,
    pub arch: String<16>,
    /// The kernel's `/proc/sys/kernel/random/boot_id`: tells a reboot from an
    /// agent restart.
    pub kernel_boot_id: [u8; 16],
    /// Boot time, seconds since the Unix epoch.
    pub boot_time_s: u64,
    pub cpus: u16,
    pub interfaces: Vec<Interface, MAX_IFACES>,
    pub disks: Vec<String<32>, MAX_DISKS>,
    pub manifests: Vec<ManifestVersion, MAX_MANIFESTS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String<16>,
    pub mac: Option<[u8; 6]>,
}

/// What a manifest protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    Firmware,
    /// AI model files.
    Model,
    /// Service configuration.
    Config,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Firmware => "firmware",
            Class::Model => "model",
            Class::Config => "config",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "firmware" => Some(Class::Firmware),
            "model" => Some(Class::Model),
            "config" => Some(Class::Config),
            _ => None,
        }
    }
}

/// A manifest in force: who issued it, for what, which version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVersion {
    pub class: Class,
    pub issuer: String<64>,
    pub scope: String<64>,
    pub version: u64,
}

/// Changes in the socket table since the previous `Sockets` frame (or the
/// whole table when `snapshot` is set, e.g. first in a boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sockets {
    pub snapshot: bool,
    pub changes: Vec<SocketChange, MAX_SOCKET_CHANGES>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketChange {
    pub change: Change,
    pub kind: SocketKind,
    pub proto: Proto,
    pub local: Endpoint,
    /// Absent for listening sockets.
    pub remote: Option<Endpoint>,
    pub uid: u32,
    /// Owning process name (`comm`), empty when it could not be resolved.
    pub process: String<32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    Added,
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SocketKind {
    Listen,
    /// Connected, the device initiated it.
    Outbound,
    /// Connected to one of the device's listeners.
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: Addr,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Result of checking one manifest against the device's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    pub manifest: ManifestVersion,
    /// Entries checked in this pass.
    pub checked: u32,
    /// More findings follow in further `Integrity` frames of the same pass.
    pub continued: bool,
    pub findings: Vec<Finding, MAX_FINDINGS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Path relative to the manifest root, raw bytes (may not be UTF-8);
    /// longer paths are cut to `MAX_PATH` bytes.
    pub path: Vec<u8, MAX_PATH>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FindingKind {
    /// Content differs (SHA-256 or size).
    Modified {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    /// Mode, owner or group differs (e.g. a new set-uid bit).
    Metadata {
        expected: FileMeta,
        actual: FileMeta,
    },
    Missing,
    /// A file not listed inside an exclusive directory.
    Unexpected,
    /// File became a directory, a symlink, ... or a symlink's target changed.
    TypeChanged,
    Unreadable,
    /// The manifest's signature does not verify.
    BadSignature,
    /// Signed by a key the device does not trust.
    UntrustedKey,
    /// Version lower than one accepted before for the same issuer and scope.
    Rollback {
        accepted: u64,
        offered: u64,
    },
    /// A validly signed manifest of another class, issuer or scope than the
    /// one this manifest file was first accepted as (the report names what
    /// it is now): it cannot stand in for it.
    ScopeChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Results of hardening checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posture {
    pub continued: bool,
    pub results: Vec<CheckResult, MAX_CHECKS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Stable id, e.g. `ssh.password-auth`.
    pub id: String<32>,
    pub title: String<64>,
    pub status: CheckStatus,
    pub evidence: String<160>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckStatus {
    Pass,
    Fail,
    NotApplicable,
    Error,
}

/// Frames the agent dropped, and why. `ranges` names every dropped sequence
/// number, so the collector can tell an explained hole from a lost frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub reason: GapReason,
    pub kind: BodyKind,
    /// Samples inside the dropped frames.
    pub samples: u64,
    pub ranges: Vec<SeqRange, MAX_GAP_RANGES>,
}

impl Gap {
    /// Number of dropped frames.
    pub fn frames(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.count))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GapReason {
    /// The store-and-forward queue was full.
    QueueFull,
    /// A frame could not be encoded (too large) and was replaced by this record.
    Unencodable,
    /// Acknowledged by another collector (stored there, or explained by a
    /// Gap there): sent to a collector the agent fails over to, which never
    /// saw them. Nothing was dropped; `kind` is `Hello` and `samples` 0.
    Elsewhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: u64,
    pub count: u64,
}

impl SeqRange {
    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first && seq - self.first < self.count
    }
}

/// Sent when there is nothing else to say, so silence means trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub uptime_s: u64,
    pub queued_frames: u32,
    pub queued_bytes: u32,
}

/// Logins and privileged sessions on the device, opened and closed since
/// the previous `Sessions` frame, and findings about the login records
/// themselves. A security frame: never evicted. First in a sequence space
/// comes a snapshot: every open session as `Opened`, over as many frames as
/// it takes (`continued` on all but the last; an empty one when there are
/// none), so a collector can close what ended while no agent was watching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    pub snapshot: bool,
    pub continued: bool,
    pub events: Vec<SessionEvent, MAX_SESSION_EVENTS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    Opened(Session),
    Closed {
        session: Session,
        ended_s: u64,
    },
    /// Records of a login log vanished or changed between two reads.
    LogTampered(LogTamper),
}

/// One session as the device saw it. Every field is the device's word,
/// signed with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Stable for the life of the session, across agent restarts: derived
    /// from the session's leading process (pid and start time) or its login
    /// record.
    pub key: u64,
    pub kind: SessionKind,
    /// Who the session runs as (`root` for a privileged session).
    pub user: String<32>,
    pub uid: Option<u32>,
    /// `pts/0`, `ttyS0`, `notty`, ... (empty when unknown).
    pub terminal: String<32>,
    /// The peer of a remote session; port 0 when only the address is known
    /// (a login record without the process's socket).
    pub remote: Option<Endpoint>,
    /// The process that owns the session: `sshd`, `dropbear`, `login`,
    /// `su`, `sudo`.
    pub process: String<32>,
    pub pid: u32,
    /// What a privileged session runs as root when first seen (`bash`,
    /// `sleep`, ...).
    pub command: String<32>,
    /// The session a privileged one was started from, and its user.
    pub parent: Option<u64>,
    pub by_user: String<32>,
    /// Unix seconds.
    pub started_s: u64,
    pub source: SessionSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionKind {
    /// Over the network (ssh, dropbear, telnet).
    Remote,
    /// On a local terminal or serial console (getty/login).
    Console,
    /// A root shell or command started with `su` or `sudo`.
    Privileged,
}

impl SessionKind {
    pub fn name(self) -> &'static str {
        match self {
            SessionKind::Remote => "remote",
            SessionKind::Console => "console",
            SessionKind::Privileged => "privileged",
        }
    }
}

/// Where the agent learned of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionSource {
    /// The process table (with the login record's details when there is one).
    Processes,
    /// `utmp`: a login record of a session the process table did not explain.
    Utmp,
    /// `wtmp`: a session that opened and closed between two reads.
    Wtmp,
}

impl SessionSource {
    pub fn name(self) -> &'static str {
        match self {
            SessionSource::Processes => "processes",
            SessionSource::Utmp => "utmp",
            SessionSource::Wtmp => "wtmp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTamper {
    /// The log, e.g. `/var/log/wtmp`.
    pub path: String<64>,
    pub kind: TamperKind,
    /// Bytes the agent had read before, and the log's size now.
    pub expected_len: u64,
    pub actual_len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TamperKind {
    /// The log is shorter than what was already read.
    Truncated,
    /// Records already read changed in place.
    Rewritten,
    /// The log was replaced or removed, and not by a rotation that kept the
    /// old records (`FILE.1`).
    Replaced,
}

impl TamperKind {
    pub fn name(self) -> &'static str {
        match self {
            TamperKind::Truncated => "truncated",
            TamperKind::Rewritten => "rewritten",
            TamperKind::Replaced => "replaced",
        }
    }
}
