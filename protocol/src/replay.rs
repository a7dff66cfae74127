//! Sequence and replay rules (SPEC.md, "Sequence spaces and replay"): where a
//! verified frame stands against what the collector has seen from the same
//! device. Pure decisions; the caller persists `Position` and consults its
//! archive for frames that are `Behind`.

use crate::frame::Header;

/// The highest frame seen from one device: its boot counter and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub boot: u32,
    pub seq: u64,
}

/// Where a frame stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The first frame ever seen from the device.
    First,
    /// Ahead in the current boot; `skipped` sequence numbers were not seen
    /// (a hole: resent later, explained by a `Gap`, or lost).
    Ahead { skipped: u64 },
    /// A new sequence space: the agent restarted (the device may have
    /// rebooted; `Hello::kernel_boot_id` tells). `skipped` frames of the new
    /// boot came before this one and were not seen.
    NewBoot { previous: u32, skipped: u64 },
    /// At or below the highest sequence of the current boot: a resend. The
    /// archive decides: already stored means duplicate (ack again, store
    /// nothing), not stored means it fills a hole.
    Behind,
    /// From a boot older than the current one: a replay. Reject and alert.
    StaleBoot,
}

impl Standing {
    /// Whether the frame may be stored at all (subject to the archive's
    /// exactly-once check for `Behind`).
    pub fn acceptable(self) -> bool {
        !matches!(self, Standing::StaleBoot)
    }
}

/// Classifies `frame` against the highest position seen so far.
pub fn stand(highest: Option<Position>, frame: &Header) -> Standing {
    let Some(h) = highest else {
        return Standing::First;
    };
    match frame.boot.cmp(&h.boot) {
        core::cmp::Ordering::Less => Standing::StaleBoot,
        core::cmp::Ordering::Greater => Standing::NewBoot {
            previous: h.boot,
            skipped: frame.seq,
        },
        core::cmp::Ordering::Equal if frame.seq > h.seq => Standing::Ahead {
            skipped: frame.seq - h.seq - 1,
        },
        core::cmp::Ordering::Equal => Standing::Behind,
    }
}

/// The new highest position after accepting `frame` at `standing`.
pub fn advance(highest: Option<Position>, frame: &Header) -> Position {
    let next = Position {
        boot: frame.boot,
        seq: frame.seq,
    };
    match highest {
        Some(h) if (h.boot, h.seq) >= (next.boot, next.seq) => h,
        _ => next,
    }
}

/// Per-connection order: a connection carries one device's frames, and a
/// frame of an older boot than one already seen on it is a replay spliced
/// into the stream: rejected. Within a boot the agent may go back: it sends
/// everything unacknowledged again when the acks stop moving (go-back-N;
/// one frame lost on a noisy serial line otherwise holds the ack forever),
/// and `stand` tells those resends apart (duplicate or hole filled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOrder {
    last: Option<(u32, u64)>,
}

impl ConnectionOrder {
    /// Records `frame`; `false` when it belongs to an older boot than a
    /// frame seen before on this connection.
    pub fn admit(&mut self, frame: &Header) -> bool {
        let key = (frame.boot, frame.seq);
        match self.last {
            Some((boot, _)) if frame.boot < boot => false,
            Some(last) if key <= last => true,
            _ => {
                self.last = Some(key);
                true
            }
        }
    }
}
