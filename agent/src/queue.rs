//! The bounded store-and-forward queue: signed frames wait here until the
//! collector acks them. Two fixed byte rings (`heapless`), one for routine
//! frames and a reserved one for security frames, so a flood of samples can
//! never evict a security frame. When the routine ring is full the oldest
//! routine frames go first and their sequence numbers are collected into one
//! pending `Gap`. Memory does not depend on uptime, outage length or input.

use heapless::Deque;
use vigil_protocol::body::{BodyKind, Gap, GapReason, SeqRange, MAX_GAP_RANGES};

/// Bytes held for routine frames (samples, heartbeats): at ~370 B per
/// ten-sample frame, about 40 minutes of 1 s samples.
pub const ROUTINE_BYTES: usize = 96 * 1024;
/// Bytes reserved for security frames (hello, sockets, integrity, posture, gap).
pub const SECURITY_BYTES: usize = 32 * 1024;
const ROUTINE_FRAMES: usize = 512;
const SECURITY_FRAMES: usize = 128;
/// Room in the security ring only `Gap` frames may use, so that the loss
/// of anything (routine frames evicted, security frames refused by a full
/// ring in a long outage) can still be told once the link is back. A Gap
/// frame with all its ranges is about 400 bytes.
const GAP_RESERVE_BYTES: usize = 4 * 1024;
const GAP_RESERVE_FRAMES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    seq: u64,
    len: u16,
    kind: BodyKind,
    samples: u16,
}

struct Ring<const B: usize, const F: usize> {
    bytes: Deque<u8, B>,
    meta: Deque<Meta, F>,
}

impl<const B: usize, const F: usize> Ring<B, F> {
    const fn new() -> Self {
        Self {
            bytes: Deque::new(),
            meta: Deque::new(),
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.fits_keeping(len, 0, 0)
    }

    /// Whether `len` more bytes fit with `bytes` bytes and `frames` frames
    /// still free after them.
    fn fits_keeping(&self, len: usize, bytes: usize, frames: usize) -> bool {
        B - self.bytes.len() >= len.saturating_add(bytes) && F - self.meta.len() > frames
    }

    fn push(&mut self, m: Meta, frame: &[u8]) -> bool {
        if !self.fits(frame.len()) {
            return false;
        }
        for &b in frame {
            let _ = self.bytes.push_back(b);
        }
        let _ = self.meta.push_back(m);
        true
    }

    fn pop_front(&mut self) -> Option<Meta> {
        let m = self.meta.pop_front()?;
        for _ in 0..m.len {
            self.bytes.pop_front();
        }
        Some(m)
    }

    fn front(&self) -> Option<Meta> {
        self.meta.front().copied()
    }

    /// Copies the frame with sequence `seq` into `out`.
    fn copy(&self, seq: u64, out: &mut Vec<u8>) -> bool {
        let mut skip = 0usize;
        for m in &self.meta {
            if m.seq == seq {
                // Copy from the ring's two contiguous halves directly: walking
                // the bytes up to `skip` made resending a full queue quadratic.
                let end = skip + usize::from(m.len);
                let (a, b) = self.bytes.as_slices();
                out.clear();
                out.extend_from_slice(a.get(skip.min(a.len())..end.min(a.len())).unwrap_or(&[]));
                let (bs, be) = (skip.saturating_sub(a.len()), end.saturating_sub(a.len()));
                out.extend_from_slice(b.get(bs..be).unwrap_or(&[]));
                return true;
            }
            skip += usize::from(m.len);
        }
        false
    }

    fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.meta.iter().map(|m| m.seq)
    }
}

/// Frames dropped since the last `Gap` was made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Dropped {
    ranges: heapless::Vec<SeqRange, MAX_GAP_RANGES>,
    samples: u64,
    kind: Option<BodyKind>,
}

impl Dropped {
    /// Records `m`; `false` when the ranges are full and a `Gap` must be made first.
    fn add(&mut self, m: Meta) -> bool {
        if let Some(last) = self.ranges.last_mut() {
            if last.first + last.count == m.seq {
                last.count += 1;
                self.samples += u64::from(m.samples);
                return true;
            }
        }
        if self
            .ranges
            .push(SeqRange {
                first: m.seq,
                count: 1,
            })
            .is_err()
        {
            return false;
        }
        self.samples += u64::from(m.samples);
        self.kind.get_or_insert(m.kind);
        true
    }
}

/// Counters for heartbeats and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub frames: u32,
    pub bytes: u32,
    pub dropped_frames: u64,
    pub dropped_samples: u64,
}

pub struct Queue {
    routine: Box<Ring<ROUTINE_BYTES, ROUTINE_FRAMES>>,
    security: Box<Ring<SECURITY_BYTES, SECURITY_FRAMES>>,
    dropped: Dropped,
    /// Security frames the full ring refused, one record per kind (a Gap
    /// names one kind), each named in its own `Gap`.
    refused: heapless::Vec<Dropped, 4>,
    /// Highest sequence sent on the current connection.
    sent: Option<u64>,
    /// Highest sequence an ack released (on any connection).
    acked: Option<u64>,
    stats: QueueStats,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// Longer than the ring it belongs to could ever hold.
    TooLarge,
    /// The pending `Gap` has no room for another range: make it first.
    GapFull,
    /// The security ring is full of unacknowledged security frames.
    SecurityFull,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}

impl Queue {
    pub fn new() -> Self {
        Self {
            routine: Box::new(Ring::new()),
            security: Box::new(Ring::new()),
            dropped: Dropped::default(),
            refused: heapless::Vec::new(),
            sent: None,
            acked: None,
            stats: QueueStats::default(),
        }
    }

    /// Room left in the security ring for frames other than `Gap`:
    /// (bytes, frames).
    pub fn security_room(&self) -> (usize, usize) {
        (
            (SECURITY_BYTES - self.security.bytes.len()).saturating_sub(GAP_RESERVE_BYTES),
            (SECURITY_FRAMES - self.security.meta.len()).saturating_sub(GAP_RESERVE_FRAMES),
        )
    }

    pub fn stats(&self) -> QueueStats {
        let frames = self.routine.meta.len() + self.security.meta.len();
        let bytes = self.routine.bytes.len() + self.security.bytes.len();
        QueueStats {
            frames: u32::try_from(frames).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            ..self.stats
        }
    }

    /// Queues a signed frame. Routine frames evict the oldest routine frames
    /// when their ring is full; security frames never evict anything.
    pub fn push(
        &mut self,
        seq: u64,
        kind: BodyKind,
        samples: u16,
        frame: &[u8],
    ) -> Result<(), PushError> {
        let len = u16::try_from(frame.len()).map_err(|_| PushError::TooLarge)?;
        let m = Meta {
            seq,
            len,
            kind,
            samples,
        };
        if kind.is_security() {
            if frame.len() > SECURITY_BYTES - GAP_RESERVE_BYTES {
                return Err(PushError::TooLarge);
            }
            let (bytes, frames) = match kind {
                BodyKind::Gap => (0, 0),
                _ => (GAP_RESERVE_BYTES, GAP_RESERVE_FRAMES),
            };
            return if self.security.fits_keeping(frame.len(), bytes, frames)
                && self.security.push(m, frame)
            {
                Ok(())
            } else {
                Err(PushError::SecurityFull)
            };
        }
        if frame.len() > ROUTINE_BYTES {
            return Err(PushError::TooLarge);
        }
        while !self.routine.fits(frame.len()) {
            let Some(old) = self.routine.front() else {
                break;
            };
            if !self.dropped.add(old) {
                return Err(PushError::GapFull);
            }
            self.routine.pop_front();
            self.stats.dropped_frames += 1;
            self.stats.dropped_samples += u64::from(old.samples);
        }
        if self.routine.push(m, frame) {
            Ok(())
        } else {
            Err(PushError::TooLarge)
        }
    }

    /// The `Gap` body for frames dropped since the last one, if any:
    /// routine frames evicted first, then security frames refused.
    pub fn take_gap(&mut self) -> Option<Gap> {
        let d = if self.dropped.ranges.is_empty() {
            if self.refused.is_empty() {
                return None;
            }
            self.refused.swap_remove(0)
        } else {
            std::mem::take(&mut self.dropped)
        };
        Some(Gap {
            reason: GapReason::QueueFull,
            kind: d.kind.unwrap_or(BodyKind::Samples),
            samples: d.samples,
            ranges: d.ranges,
        })
    }

    /// Records that the security frame `seq` of `kind` was made but the
    /// full ring refused it; the next `Gap` of that kind names it. `false`
    /// when the pending record of that kind has no room for it (32
    /// ranges): make the pending Gaps first.
    pub fn refuse(&mut self, seq: u64, kind: BodyKind) -> bool {
        let m = Meta {
            seq,
            len: 0,
            kind,
            samples: 0,
        };
        let added = match self.refused.iter_mut().find(|d| d.kind == Some(kind)) {
            Some(d) => d.add(m),
            None => {
                let mut d = Dropped::default();
                d.add(m) && self.refused.push(d).is_ok()
            }
        };
        if added {
            self.stats.dropped_frames += 1;
        }
        added
    }

    /// Whether a `Gap` is waiting to be made.
    pub fn gap_pending(&self) -> bool {
        !(self.dropped.ranges.is_empty() && self.refused.is_empty())
    }

    /// Forgets every frame up to and including `seq` — but never past what
    /// was actually sent on this connection (an ack for frames not sent is
    /// ignored beyond that point). Returns how many frames were released.
    pub fn ack(&mut self, seq: u64) -> usize {
        let Some(sent) = self.sent else { return 0 };
        let upto = seq.min(sent);
        let mut n = 0;
        while self.routine.front().is_some_and(|m| m.seq <= upto) {
            self.routine.pop_front();
            n += 1;
        }
        while self.security.front().is_some_and(|m| m.seq <= upto) {
            self.security.pop_front();
            n += 1;
        }
        if n > 0 {
            self.acked = Some(self.acked.map_or(upto, |a| a.max(upto)));
        }
        n
    }

    /// The highest sequence an ack released frames up to, if any did.
    pub fn acked_through(&self) -> Option<u64> {
        self.acked
    }

    /// A new connection: everything unacknowledged is sent again, oldest first.
    pub fn rewind(&mut self) {
        self.sent = None;
    }

    /// Copies the next frame to send (lowest sequence above the last one
    /// sent) into `out`, marks it sent and returns its sequence.
    pub fn next_to_send(&mut self, out: &mut Vec<u8>) -> Option<u64> {
        let after = |s: &u64| self.sent.map_or(true, |sent| *s > sent);
        let r = self.routine.seqs().find(after);
        let s = self.security.seqs().find(after);
        let seq = match (r, s) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let found = self.routine.copy(seq, out) || self.security.copy(seq, out);
        if found {
            self.sent = Some(seq);
        }
        found.then_some(seq)
    }

    pub fn is_empty(&self) -> bool {
        self.routine.meta.is_empty() && self.security.meta.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, len: usize) -> Vec<u8> {
        vec![(seq % 251) as u8; len]
    }

    /// A frame whose every byte depends on its sequence number and its
    /// position, so a wrap that swaps, drops or shifts a piece shows.
    fn distinct(seq: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                (seq.wrapping_mul(0x9E37_79B9)
                    .wrapping_add(i.wrapping_mul(0x85EB_CA6B))
                    >> 11) as u8
            })
            .collect()
    }

    #[test]
    fn sends_in_sequence_order_across_rings_and_resends_after_rewind() {
        let mut q = Queue::new();
        q.push(0, BodyKind::Hello, 0, &frame(0, 50)).unwrap();
        q.push(1, BodyKind::Samples, 10, &frame(1, 300)).unwrap();
        q.push(2, BodyKind::Posture, 0, &frame(2, 80)).unwrap();
        q.push(3, BodyKind::Samples, 10, &frame(3, 300)).unwrap();
        let mut out = Vec::new();
        let sent: Vec<u64> = std::iter::from_fn(|| q.next_to_send(&mut out)).collect();
        assert_eq!(sent, [0, 1, 2, 3]);
        assert_eq!(q.ack(1), 2);
        q.rewind();
        assert_eq!(q.next_to_send(&mut out), Some(2));
        assert_eq!(out, frame(2, 80));
        assert_eq!(q.next_to_send(&mut out), Some(3));
        assert_eq!(q.next_to_send(&mut out), None);
    }

    #[test]
    fn frames_come_back_intact_across_the_ring_wrap() {
        let mut q = Queue::new();
        // Push three ring-fulls: eviction makes the byte ring wrap many times.
        let n = 3 * ROUTINE_BYTES as u64 / 333;
        let f = distinct(0, 333);
        assert!(
            f.windows(2).filter(|w| w[0] == w[1]).count() < 20,
            "not distinct"
        );
        assert_ne!(distinct(0, 333), distinct(1, 333));
        for s in 0..n {
            q.push(s, BodyKind::Samples, 1, &distinct(s, 333)).unwrap();
        }
        let mut out = Vec::new();
        let mut sent = 0;
        while let Some(s) = q.next_to_send(&mut out) {
            assert_eq!(out, distinct(s, 333), "frame {s}");
            sent += 1;
        }
        assert_eq!(sent, q.stats().frames);
        assert!(sent > 100);
    }

    #[test]
    fn acks_beyond_what_was_sent_release_nothing_more() {
        let mut q = Queue::new();
        for s in 0..4 {
            q.push(s, BodyKind::Samples, 1, &frame(s, 100)).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(q.ack(10), 0, "nothing sent yet");
        q.next_to_send(&mut out);
        q.next_to_send(&mut out);
        assert_eq!(q.ack(u64::MAX), 2, "only the two sent frames");
        assert_eq!(q.stats().frames, 2);
        assert_eq!(q.ack(0), 0, "acks going backwards change nothing");
    }

    #[test]
    fn overflow_evicts_oldest_samples_only_and_one_gap_counts_them_exactly() {
        let mut q = Queue::new();
        let mut seq = 0;
        q.push(seq, BodyKind::Hello, 0, &frame(0, 200)).unwrap();
        seq += 1;
        // Fill well past the routine ring with 10-sample frames and a
        // security frame every 50 frames.
        let mut security = vec![0];
        for i in 0..1000u64 {
            if i % 50 == 25 {
                q.push(seq, BodyKind::Integrity, 0, &frame(seq, 500))
                    .unwrap();
                security.push(seq);
            } else {
                q.push(seq, BodyKind::Samples, 10, &frame(seq, 370))
                    .unwrap();
            }
            seq += 1;
        }
        // Twenty security frames interleave the evicted samples: one Gap still holds them all.
        let gap = q.take_gap().unwrap();
        assert!(gap.ranges.len() > 10);
        assert_eq!(gap.reason, GapReason::QueueFull);
        assert_eq!(gap.kind, BodyKind::Samples);
        let kept_routine = q.routine.meta.len() as u64;
        let routine_total = 1000 - (security.len() as u64 - 1);
        assert_eq!(gap.frames(), routine_total - kept_routine);
        assert_eq!(gap.samples, gap.frames() * 10);
        // Every security frame is still there.
        let kept: Vec<u64> = q.security.seqs().collect();
        assert_eq!(kept, security);
        // No dropped range covers a kept frame.
        for r in &gap.ranges {
            for s in q.routine.seqs().chain(q.security.seqs()) {
                assert!(!r.contains(s));
            }
        }
        assert!(q.take_gap().is_none());
        assert!(q.stats().bytes as usize <= ROUTINE_BYTES + SECURITY_BYTES);
    }

    #[test]
    fn a_full_gap_asks_for_a_gap_frame_first() {
        let mut q = Queue::new();
        let mut dropped = 0;
        let mut gaps = 0;
        // A security frame after every four sample frames, then samples only:
        // the evicted samples form more ranges than one Gap can hold.
        for seq in 0..1200u64 {
            let security = seq < 300 && seq % 5 == 4;
            let (kind, len) = if security {
                (BodyKind::Posture, 60)
            } else {
                (BodyKind::Samples, 370)
            };
            if let Err(e) = q.push(seq, kind, 10, &frame(seq, len)) {
                assert_eq!(e, PushError::GapFull);
                dropped += q.take_gap().unwrap().frames();
                gaps += 1;
                q.push(seq, kind, 10, &frame(seq, len)).unwrap();
            }
        }
        dropped += q.take_gap().map_or(0, |g| g.frames());
        assert!(gaps >= 1);
        assert_eq!(dropped, q.stats().dropped_frames);
        assert_eq!(dropped, 1200 - 60 - q.routine.meta.len() as u64);
    }

    #[test]
    fn a_full_security_ring_refuses_instead_of_evicting() {
        let mut q = Queue::new();
        let mut seq = 0;
        loop {
            match q.push(seq, BodyKind::Sockets, 0, &frame(seq, 1000)) {
                Ok(()) => seq += 1,
                Err(e) => {
                    assert_eq!(e, PushError::SecurityFull);
                    break;
                }
            }
        }
        assert_eq!(seq as usize, (SECURITY_BYTES - GAP_RESERVE_BYTES) / 1000);
        // Samples still flow.
        q.push(seq, BodyKind::Samples, 1, &frame(seq, 100)).unwrap();
        // And a Gap telling of the loss still fits, in the room kept for it.
        assert!(q.refuse(seq + 1, BodyKind::Sockets));
        assert!(q.gap_pending());
        q.push(seq + 2, BodyKind::Gap, 0, &frame(seq + 2, 400))
            .unwrap();
        let gap = q.take_gap().unwrap();
        assert_eq!((gap.kind, gap.frames()), (BodyKind::Sockets, 1));
        assert!(!q.gap_pending());
    }
}
