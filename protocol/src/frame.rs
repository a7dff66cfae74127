//! Signed frames: `Frame` (what the device builds) -> wire bytes ->
//! `SignedFrame` (parsed, not trusted) -> `VerifiedFrame` (only `verify`
//! makes one). Also the collector's only message, `Ack`. Takes bytes, keys
//! and times as arguments; never reads a clock or touches I/O.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, SIGNATURE_LENGTH};
use heapless::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::body::{Body, BodyKind, Hello};
use crate::cobs;

/// Wire-format version carried in every frame and ack.
pub const VERSION: u8 = 1;
/// Largest frame (header, body and signature, before COBS) anyone sends or accepts.
pub const MAX_FRAME_LEN: usize = 4096;
/// Largest frame on the wire: COBS overhead and the delimiter included.
pub const MAX_WIRE_LEN: usize = cobs::encoded_max(MAX_FRAME_LEN);
/// Prefix of the signed message; keeps frame signatures from being valid
/// for anything else signed with the same key.
pub const SIGNING_DOMAIN: &[u8] = b"vigil/frame/v1\0";

/// Short fingerprint of a device's ed25519 public key: the first 8 bytes
/// of SHA-256 over the 32 key bytes. Shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 8]);

impl DeviceId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        DeviceId(id)
    }

    /// Parses the 16-hex-digit form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; 8];
        crate::hex::decode_into(s, &mut id)?;
        Some(DeviceId(id))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(f, &self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Prefix of a device public key in text form (`vigil-agent id`,
/// `vigil-collector enroll --key`): `ed25519:` then the 32 key bytes in
/// standard base64.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Writes `key` in its text form (`ed25519:<base64>`, 52 characters).
pub fn write_public_key(f: &mut impl fmt::Write, key: &VerifyingKey) -> fmt::Result {
    let mut buf = [0u8; 44];
    let b64 = <base64ct::Base64 as base64ct::Encoding>::encode(key.as_bytes(), &mut buf)
        .map_err(|_| fmt::Error)?;
    write!(f, "{PUBLIC_KEY_PREFIX}{b64}")
}

/// Parses the text form written by `write_public_key`.
pub fn parse_public_key(s: &str) -> Option<VerifyingKey> {
    let b64 = s.trim().strip_prefix(PUBLIC_KEY_PREFIX)?;
    let mut key = [0u8; 32];
    match <base64ct::Base64 as base64ct::Encoding>::decode(b64, &mut key) {
        Ok(d) if d.len() == 32 => VerifyingKey::from_bytes(&key).ok(),
        _ => None,
    }
}

/// Everything about a frame except its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u8,
    pub device: DeviceId,
    /// The agent's boot counter: persisted and incremented each time the
    /// agent starts, so sequence spaces are ordered.
    pub boot: u32,
    /// Starts at 0 in every boot and only grows.
    pub seq: u64,
    /// Device wall clock when the frame was made, ms since the Unix epoch.
    pub time_ms: u64,
}

/// A frame before signing.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub body: Body,
}

/// Why bytes could not be read as a frame or ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than a header and a signature.
    Truncated,
    /// Longer than `MAX_FRAME_LEN`.
    Oversize,
    /// A protocol version this build does not speak.
    Version,
    /// The bytes do not follow the layout in SPEC.md.
    Malformed,
    /// A body variant newer than this build: the frame still verifies and
    /// can be archived, but not interpreted.
    UnknownBody,
    /// An ack whose CRC does not match: changed on the line.
    Checksum,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed `MAX_FRAME_LEN`: split the body.
    TooLarge,
    /// The body breaks an invariant (e.g. an empty sample batch).
    Invalid,
}

/// A failed signature check. Deliberately says nothing about why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    Invalid,
}

impl Frame {
    pub fn new(header: Header, body: Body) -> Self {
        Self { header, body }
    }

    /// Encodes and signs the frame: `postcard(header) || postcard(body) || signature`,
    /// the signature covering `SIGNING_DOMAIN || postcard(header) || postcard(body)`.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8, MAX_FRAME_LEN>, EncodeError> {
        let mut msg = Vec::<u8, { SIGNING_DOMAIN.len() + MAX_FRAME_LEN }>::new();
        msg.extend_from_slice(SIGNING_DOMAIN)
            .map_err(|()| EncodeError::TooLarge)?;
        let used = msg.len();
        let mut scratch = [0u8; MAX_FRAME_LEN];
        let head_len = postcard::to_slice(&self.header, &mut scratch)
            .map_err(map_enc)?
            .len();
        let tail = scratch.get_mut(head_len..).ok_or(EncodeError::TooLarge)?;
        let body_len = match &self.body {
            Body::Samples(s) => {
                // Sample times travel as ages before the header's time.
                let mut aged = Body::Samples(s.clone());
                if let Body::Samples(a) = &mut aged {
                    a.mirror_times(self.header.time_ms);
                }
                postcard::to_slice(&aged, tail)
            }
            body => postcard::to_slice(body, tail),
        }
        .map_err(map_enc)?
        .len();
        let unsigned = scratch
            .get(..head_len + body_len)
            .ok_or(EncodeError::TooLarge)?;
        if unsigned.len() + SIGNATURE_LENGTH > MAX_FRAME_LEN {
            return Err(EncodeError::TooLarge);
        }
        msg.extend_from_slice(unsigned)
            .map_err(|()| EncodeError::TooLarge)?;
        let sig = key.sign(&msg);
        let mut out = Vec::new();
        out.extend_from_slice(msg.get(used..).unwrap_or(&[]))
            .map_err(|()| EncodeError::TooLarge)?;
        out.extend_from_slice(&sig.to_bytes())
            .map_err(|()| EncodeError::TooLarge)?;
        Ok(out)
    }
}

fn map_enc(e: postcard::Error) -> EncodeError {
    match e {
        // The only custom error our types raise is a sample batch whose
        // packed form does not fit a frame.
        postcard::Error::SerializeBufferFull | postcard::Error::SerdeSerCustom => {
            EncodeError::TooLarge
        }
        _ => EncodeError::Invalid,
    }
}

/// COBS-encodes signed frame bytes (or an ack) for the wire, delimiter included.
pub fn to_wire(frame: &[u8]) -> Option<Vec<u8, MAX_WIRE_LEN>> {
    let mut out = Vec::new();
    cobs::encode_into(frame, &mut out)?;
    Some(out)
}

/// A frame as received: header parsed, signature not yet checked.
#[derive(Clone, Copy)]
pub struct SignedFrame<'a> {
    header: Header,
    bytes: &'a [u8],
    body_at: usize,
}

impl<'a> SignedFrame<'a> {
    /// Parses the header and locates body and signature. Does not decode the
    /// body (an unknown body can still be verified and archived).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(DecodeError::Oversize);
        }
        if bytes.first().is_some_and(|&v| v != VERSION) {
            return Err(DecodeError::Version);
        }
        let (header, rest) =
            postcard::take_from_bytes::<Header>(bytes).map_err(|_| DecodeError::Truncated)?;
        if rest.len() < SIGNATURE_LENGTH + 1 {
            return Err(DecodeError::Truncated);
        }
        Ok(Self {
            header,
            bytes,
            body_at: bytes.len() - rest.len(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The kind the (not yet verified) body claims, from its tag.
    pub fn kind(&self) -> Option<BodyKind> {
        let end = self.bytes.len() - SIGNATURE_LENGTH;
        let tag = self.bytes.get(self.body_at..end)?.first()?;
        Some(match tag {
            0 => BodyKind::Hello,
            1 => BodyKind::Samples,
            2 => BodyKind::Sockets,
            3 => BodyKind::Integrity,
            4 => BodyKind::Posture,
            5 => BodyKind::Gap,
            6 => BodyKind::Heartbeat,
            7 => BodyKind::Sessions,
            _ => return None,
        })
    }

    /// Checks the signature with `verify_strict` (no small-order keys, no
    /// non-canonical signatures) and that `key` is the device's key.
    pub fn verify(self, key: &VerifyingKey) -> Result<VerifiedFrame<'a>, VerifyError> {
        if DeviceId::of(key) != self.header.device {
            return Err(VerifyError::Invalid);
        }
        let split = self.bytes.len() - SIGNATURE_LENGTH;
        let (signed, sig) = self
            .bytes
            .split_at_checked(split)
            .ok_or(VerifyError::Invalid)?;
        let sig = Signature::from_slice(sig).map_err(|_| VerifyError::Invalid)?;
        let mut msg = Vec::<u8, { SIGNING_DOMAIN.len() + MAX_FRAME_LEN }>::new();
        msg.extend_from_slice(SIGNING_DOMAIN)
            .map_err(|()| VerifyError::Invalid)?;
        msg.extend_from_slice(signed)
            .map_err(|()| VerifyError::Invalid)?;
        key.verify_strict(&msg, &sig)
            .map_err(|_| VerifyError::Invalid)?;
        Ok(VerifiedFrame { inner: self })
    }

    /// For a device the verifier does not know yet: checks that this is a
    /// `Hello` signed by the key it carries, whose fingerprint is the
    /// frame's device id. Returns the verified frame, the key and the body.
    /// This proves possession of the key, not that the device is trusted.
    pub fn verify_hello(self) -> Result<(VerifiedFrame<'a>, VerifyingKey, Hello), VerifyError> {
        let unverified = VerifiedFrame { inner: self };
        let Ok(Body::Hello(hello)) = unverified.body() else {
            return Err(VerifyError::Invalid);
        };
        let key = VerifyingKey::from_bytes(&hello.public_key).map_err(|_| VerifyError::Invalid)?;
        if key.is_weak() {
            return Err(VerifyError::Invalid);
        }
        let verified = self.verify(&key)?;
        Ok((verified, key, hello))
    }
}

/// A frame whose signature checked out against its device's key.
#[derive(Clone, Copy)]
pub struct VerifiedFrame<'a> {
    inner: SignedFrame<'a>,
}

impl<'a> VerifiedFrame<'a> {
    pub fn header(&self) -> &Header {
        &self.inner.header
    }

    /// The exact signed bytes, for the archive (re-verifiable later).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.inner.bytes
    }

    /// The body's kind, read from its tag, `None` for a body newer than this build.
    pub fn kind(&self) -> Option<BodyKind> {
        self.inner.kind()
    }

    /// Decodes the body; every body byte must be consumed.
    pub fn body(&self) -> Result<Body, DecodeError> {
        if self.kind().is_none() {
            return Err(DecodeError::UnknownBody);
        }
        match postcard::take_from_bytes::<Body>(self.body_bytes()) {
            Ok((Body::Samples(mut s), [])) => {
                s.mirror_times(self.inner.header.time_ms);
                Ok(Body::Samples(s))
            }
            Ok((body, [])) => Ok(body),
            _ => Err(DecodeError::Malformed),
        }
    }

    fn body_bytes(&self) -> &'a [u8] {
        let end = self.inner.bytes.len() - SIGNATURE_LENGTH;
        self.inner.bytes.get(self.inner.body_at..end).unwrap_or(&[])
    }
}

/// A verified frame that owns its bytes, to cross a thread or queue
/// boundary without verifying again. Only made from a `VerifiedFrame`.
#[cfg(feature = "alloc")]
#[derive(Clone)]
pub struct VerifiedBuf {
    header: Header,
    bytes: alloc::vec::Vec<u8>,
    body_at: usize,
}

#[cfg(feature = "alloc")]
impl VerifiedFrame<'_> {
    pub fn to_buf(&self) -> VerifiedBuf {
        VerifiedBuf {
            header: self.inner.header,
            bytes: self.inner.bytes.to_vec(),
            body_at: self.inner.body_at,
        }
    }
}

#[cfg(feature = "alloc")]
impl VerifiedBuf {
    pub fn frame(&self) -> VerifiedFrame<'_> {
        VerifiedFrame {
            inner: SignedFrame {
                header: self.header,
                bytes: &self.bytes,
                body_at: self.body_at,
            },
        }
    }
}

/// The collector's acknowledgement: every frame of `boot` up to and
/// including `seq` is durably stored (or explained by a `Gap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub device: DeviceId,
    pub boot: u32,
    pub seq: u64,
}

/// Everything the collector can ever say to a device: an ack, or why it
/// will not take the device's frames. Nothing in it is a command: a status
/// only tells a refused agent to wait politely (SPEC.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downlink {
    Ack(Ack),
    Status(Status),
}

/// Sent before the collector closes a session it will not take frames on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device: DeviceId,
    pub standing: Standing,
}

/// Where a device the collector refuses stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standing {
    /// Known, waiting for a person to approve it: frames are kept on the
    /// device and sent after approval.
    Pending,
    /// Revoked: nothing from this key will be stored.
    Revoked,
}

impl Downlink {
    /// `DOWNLINK_VERSION || postcard(self) || crc32 (LE)`, the CRC over
    /// everything before it; COBS framing comes on top.
    pub fn encode(&self) -> Vec<u8, MAX_DOWNLINK_LEN> {
        let mut buf = [0u8; MAX_DOWNLINK_LEN];
        let mut out = Vec::new();
        // Version byte, at most 1 + 8 + 5 + 10 bytes, 4 of CRC: always fits.
        let _ = out.push(DOWNLINK_VERSION);
        if let Ok(b) = postcard::to_slice(self, &mut buf) {
            let _ = out.extend_from_slice(b);
        }
        let crc = crc32(&out).to_le_bytes();
        let _ = out.extend_from_slice(&crc);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Downlink, DecodeError> {
        if bytes.len() > MAX_DOWNLINK_LEN {
            return Err(DecodeError::Oversize);
        }
        let (&version, _) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != DOWNLINK_VERSION {
            return Err(DecodeError::Version);
        }
        let Some(at) = bytes.len().checked_sub(4).filter(|&at| at > 1) else {
            return Err(DecodeError::Truncated);
        };
        let (message, crc) = bytes.split_at(at);
        if crc32(message).to_le_bytes() != crc {
            return Err(DecodeError::Checksum);
        }
        match postcard::take_from_bytes::<Downlink>(message.get(1..).unwrap_or(&[])) {
            Ok((d, [])) => Ok(d),
            _ => Err(DecodeError::Malformed),
        }
    }
}

/// Largest encoded downlink message.
pub const MAX_DOWNLINK_LEN: usize = 32;

/// The downlink's own version byte. 2: acks end in a CRC-32, so a byte
/// changed by a noisy serial line can never read as an ack for frames the
/// collector did not store (version 1 had none).
pub const DOWNLINK_VERSION: u8 = 2;

/// CRC-32 (IEEE 802.3, reflected, as zlib): bitwise, for a few dozen bytes.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

impl Ack {
    /// `Downlink::Ack(self)` encoded.
    pub fn encode(&self) -> Vec<u8, MAX_DOWNLINK_LEN> {
        Downlink::Ack(*self).encode()
    }

    /// An ack, and only an ack (a status is `Malformed` here).
    pub fn decode(bytes: &[u8]) -> Result<Ack, DecodeError> {
        match Downlink::decode(bytes)? {
            Downlink::Ack(a) => Ok(a),
            Downlink::Status(_) => Err(DecodeError::Malformed),
        }
    }
}
