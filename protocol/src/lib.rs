//! The Vigil wire format: signed, COBS-delimited frames from device to
//! collector, the collector's acks, compact sample batches, and the
//! minisign-signed manifest format. `no_std`, sans-I/O: bytes, keys and times
//! come in as arguments. The only crate that defines wire types. See
//! `SPEC.md` for the bytes. It also holds the one check both binaries need
//! before they parse a configuration file (`nesting`).
#![no_std]
#![forbid(unsafe_code)]
#![warn(clippy::indexing_slicing)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod body;
pub mod cobs;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod hex;
#[cfg(feature = "alloc")]
pub mod manifest;
pub mod minisign;
pub mod nesting;
pub mod replay;
pub mod sample;
mod varint;

pub use body::{Body, BodyKind};
#[cfg(feature = "alloc")]
pub use frame::VerifiedBuf;
pub use frame::{
    to_wire, Ack, DecodeError, DeviceId, Downlink, EncodeError, Frame, Header, SignedFrame,
    Standing, Status, VerifiedFrame, VerifyError, DOWNLINK_VERSION, MAX_FRAME_LEN, MAX_WIRE_LEN,
    VERSION,
};
pub use sample::{Sample, Samples};

/// Re-exported so users name the same key types the protocol signs with.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
