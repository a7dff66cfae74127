//! COBS framing with a 0x00 delimiter: the encoder and a streaming decoder
//! with a fixed maximum frame size. Identical on TCP and serial. The decoder
//! never panics, never holds more than `N` bytes, drops garbage up to the next
//! delimiter and counts everything it drops. It does not look inside frames.

/// Bytes COBS needs at most to encode `len` bytes, including the delimiter.
pub const fn encoded_max(len: usize) -> usize {
    len + len / 254 + 2
}

/// COBS-encodes `data` followed by the 0x00 delimiter, appending to `out`.
/// Returns `None` (leaving `out` possibly partly written) when `out` is full.
pub fn encode_into<const N: usize>(data: &[u8], out: &mut heapless::Vec<u8, N>) -> Option<()> {
    let mut code_at = out.len();
    out.push(0).ok()?;
    let mut code: u8 = 1;
    for &b in data {
        if b != 0 {
            out.push(b).ok()?;
            code += 1;
        }
        if b == 0 || code == 0xff {
            *out.get_mut(code_at)? = code;
            code_at = out.len();
            out.push(0).ok()?;
            code = 1;
        }
    }
    *out.get_mut(code_at)? = code;
    out.push(0).ok()
}

/// Decodes one COBS frame (without its delimiter) into `out`.
pub fn decode_into<const N: usize>(
    encoded: &[u8],
    out: &mut heapless::Vec<u8, N>,
) -> Result<(), FrameError> {
    let mut d = Decoder::<N>::new();
    for &b in encoded {
        if b == 0 {
            return Err(FrameError::Corrupt);
        }
        d.step(b)?;
    }
    d.finish()?;
    out.clear();
    out.extend_from_slice(&d.buf)
        .map_err(|()| FrameError::Oversize)
}

/// Why a frame was dropped by the streaming decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes between two delimiters are not valid COBS.
    Corrupt,
    /// The frame decodes to more than the decoder's maximum size.
    Oversize,
}

/// What the streaming decoder has dropped so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames handed out.
    pub frames: u64,
    /// Frames dropped because their COBS encoding was broken.
    pub corrupt: u64,
    /// Frames dropped because they were larger than the maximum.
    pub oversize: u64,
    /// Bytes discarded with dropped frames (delimiters not counted).
    pub bytes_dropped: u64,
}

/// Incremental COBS decoding state for one frame.
struct Decoder<const N: usize> {
    buf: heapless::Vec<u8, N>,
    /// Data bytes still expected in the current run; 0 means the next byte is a code.
    remaining: u8,
    /// Whether the current run ends in an implied zero (code < 0xff).
    zero_after: bool,
    started: bool,
}

impl<const N: usize> Decoder<N> {
    const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            remaining: 0,
            zero_after: false,
            started: false,
        }
    }

    fn step(&mut self, b: u8) -> Result<(), FrameError> {
        if self.remaining == 0 {
            if self.started && self.zero_after {
                self.buf.push(0).map_err(|_| FrameError::Oversize)?;
            }
            self.started = true;
            self.remaining = b - 1;
            self.zero_after = b != 0xff;
        } else {
            self.buf.push(b).map_err(|_| FrameError::Oversize)?;
            self.remaining -= 1;
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), FrameError> {
        if !self.started || self.remaining != 0 {
            return Err(FrameError::Corrupt);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.remaining = 0;
        self.zero_after = false;
        self.started = false;
    }
}

/// Streaming frame decoder holding at most `N` decoded bytes.
///
/// Feed it whatever the transport delivered; it yields each complete frame
/// as a borrowed slice. Empty frames (consecutive delimiters) are ignored, so
/// a sender may emit a lone `0x00` to resynchronise the receiver; so are
/// frames that decode to no bytes.
pub struct FrameDecoder<const N: usize> {
    dec: Decoder<N>,
    /// Set after an error: discard until the next delimiter.
    skipping: Option<FrameError>,
    /// A frame was handed out and still sits in the buffer.
    emitted: bool,
    pending: u64,
    stats: FrameStats,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// A decoder in its initial state.
    pub const fn new() -> Self {
        Self {
            dec: Decoder::new(),
            skipping: None,
            emitted: false,
            pending: 0,
            stats: FrameStats {
                frames: 0,
                corrupt: 0,
                oversize: 0,
                bytes_dropped: 0,
            },
        }
    }

    /// Counters of what was decoded and dropped.
    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    /// The frame being received is already larger than the maximum and no
    /// delimiter has ended it yet: a stream transport can give up on the
    /// peer now instead of reading on until a delimiter that may never come
    /// (a serial line just resynchronises at the next one).
    pub fn in_oversize_frame(&self) -> bool {
        self.skipping == Some(FrameError::Oversize)
    }

    /// Consumes bytes from the front of `input` until one frame completes or
    /// `input` is empty. Returns the frame, or the reason it was dropped, or
    /// `None` when more input is needed.
    pub fn feed<'d>(&'d mut self, input: &mut &[u8]) -> Option<Result<&'d [u8], FrameError>> {
        if core::mem::take(&mut self.emitted) {
            self.dec.reset();
        }
        while let Some((&b, rest)) = input.split_first() {
            *input = rest;
            if b == 0 {
                let bytes = core::mem::take(&mut self.pending);
                if let Some(err) = self.skipping.take() {
                    self.drop_frame(err, bytes);
                    self.dec.reset();
                    return Some(Err(err));
                }
                if bytes == 0 {
                    continue;
                }
                if let Err(err) = self.dec.finish() {
                    self.drop_frame(err, bytes);
                    self.dec.reset();
                    return Some(Err(err));
                }
                if self.dec.buf.is_empty() {
                    // `01 00` encodes nothing: a keep-alive, like a lone delimiter.
                    self.dec.reset();
                    continue;
                }
                self.stats.frames += 1;
                // The decoded bytes stay in the buffer until the next call.
                self.emitted = true;
                return Some(Ok(&self.dec.buf));
            }
            self.pending += 1;
            if self.skipping.is_none() {
                if let Err(err) = self.dec.step(b) {
                    self.skipping = Some(err);
                    self.dec.reset();
                }
            }
        }
        None
    }

    fn drop_frame(&mut self, err: FrameError, bytes: u64) {
        self.stats.bytes_dropped += bytes;
        match err {
            FrameError::Corrupt => self.stats.corrupt += 1,
            FrameError::Oversize => self.stats.oversize += 1,
        }
    }
}
