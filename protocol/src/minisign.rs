//! Minisign-format public keys and signatures: parse, verify (`Ed` legacy
//! and `ED` BLAKE2b-prehashed, trusted comment included) and, with `alloc`,
//! sign. Compatible with the `minisign` tool both ways. Takes text and bytes
//! as arguments; reading files is the caller's job.

use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signature, VerifyingKey};

/// Why a minisign key or signature was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MinisignError {
    /// Not the line layout minisign writes.
    Malformed,
    /// Bad base64, or decoded to the wrong length.
    Encoding,
    /// An algorithm other than `Ed` / `ED`.
    Algorithm,
    /// The signature names a different key id than the public key.
    KeyMismatch,
    /// The signature over the content does not verify.
    BadSignature,
    /// The signature over the trusted comment does not verify.
    BadTrustedComment,
    /// A secret key protected with a password (scrypt): not supported here;
    /// sign with `minisign -S`, or make the key with `minisign -G -W`.
    EncryptedKey,
    /// A secret key whose checksum does not match its content.
    Checksum,
}

/// Signature algorithm: `Ed` signs the content itself, `ED` its BLAKE2b-512 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Legacy,
    Prehashed,
}

impl Algorithm {
    #[cfg(feature = "alloc")]
    fn tag(self) -> [u8; 2] {
        match self {
            Algorithm::Legacy => *b"Ed",
            Algorithm::Prehashed => *b"ED",
        }
    }
}

const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";

/// A minisign public key: key id and ed25519 key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: [u8; 8],
    pub key: VerifyingKey,
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", KeyIdDisplay(self.key_id))
    }
}

/// Shows a key id the way minisign prints it (a little-endian u64 in upper-case hex).
pub struct KeyIdDisplay(pub [u8; 8]);

impl core::fmt::Display for KeyIdDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl PublicKey {
    /// Parses a public key file (`untrusted comment:` line, then base64) or
    /// the bare base64 line (as `minisign -P` takes it).
    pub fn parse(text: &str) -> Result<Self, MinisignError> {
        let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().ok_or(MinisignError::Malformed)?;
        let b64 = if first.starts_with(UNTRUSTED) {
            lines.next().ok_or(MinisignError::Malformed)?
        } else {
            first
        };
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(MinisignError::Malformed);
        }
        let mut raw = [0u8; 42];
        decode_exact(b64.trim(), &mut raw)?;
        let (alg, rest) = raw.split_at(2);
        if alg != b"Ed" {
            return Err(MinisignError::Algorithm);
        }
        let (id, key) = rest.split_at(8);
        let key: [u8; 32] = key.try_into().map_err(|_| MinisignError::Encoding)?;
        Ok(PublicKey {
            key_id: id.try_into().map_err(|_| MinisignError::Encoding)?,
            key: VerifyingKey::from_bytes(&key).map_err(|_| MinisignError::Encoding)?,
        })
    }

    /// The 56-character base64 line.
    pub fn to_base64(&self, out: &mut [u8; 56]) -> Result<(), MinisignError> {
        let mut raw = [0u8; 42];
        raw[..2].copy_from_slice(b"Ed");
        raw[2..10].copy_from_slice(&self.key_id);
        raw[10..].copy_from_slice(self.key.as_bytes());
        <base64ct::Base64 as base64ct::Encoding>::encode(&raw, out)
            .map_err(|_| MinisignError::Encoding)?;
        Ok(())
    }
}

fn decode_exact(b64: &str, out: &mut [u8]) -> Result<(), MinisignError> {
    use base64ct::{Base64, Encoding};
    let want = out.len();
    match Base64::decode(b64, out) {
        Ok(d) if d.len() == want => Ok(()),
        _ => Err(MinisignError::Encoding),
    }
}

/// A parsed `.minisig` file.
#[derive(Debug, Clone, Copy)]
pub struct SignatureFile<'a> {
    pub algorithm: Algorithm,
    pub key_id: [u8; 8],
    signature: Signature,
    /// Text after `trusted comment: `; authenticated once `verify` succeeds.
    trusted_comment: &'a str,
    global: Signature,
}

impl<'a> SignatureFile<'a> {
    pub fn parse(text: &'a str) -> Result<Self, MinisignError> {
        let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
        let mut next = || lines.next().ok_or(MinisignError::Malformed);
        if !next()?.starts_with(UNTRUSTED) {
            return Err(MinisignError::Malformed);
        }
        let mut raw = [0u8; 74];
        decode_exact(next()?.trim(), &mut raw)?;
        let trusted_comment = next()?
            .strip_prefix(TRUSTED)
            .ok_or(MinisignError::Malformed)?;
        let mut global = [0u8; 64];
        decode_exact(next()?.trim(), &mut global)?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(MinisignError::Malformed);
        }
        let (alg, rest) = raw.split_at(2);
        let algorithm = match alg {
            b"Ed" => Algorithm::Legacy,
            b"ED" => Algorithm::Prehashed,
            _ => return Err(MinisignError::Algorithm),
        };
        let (id, sig) = rest.split_at(8);
        Ok(SignatureFile {
            algorithm,
            key_id: id.try_into().map_err(|_| MinisignError::Encoding)?,
            signature: Signature::from_slice(sig).map_err(|_| MinisignError::Encoding)?,
            trusted_comment,
            global: Signature::from_bytes(&global),
        })
    }

    /// Verifies the content signature and the trusted-comment signature with
    /// `verify_strict`; returns the (now authenticated) trusted comment.
    pub fn verify(&self, key: &PublicKey, content: &[u8]) -> Result<&'a str, MinisignError> {
        if key.key_id != self.key_id {
            return Err(MinisignError::KeyMismatch);
        }
        let ok = match self.algorithm {
            Algorithm::Legacy => key.key.verify_strict(content, &self.signature),
            Algorithm::Prehashed => key
                .key
                .verify_strict(&Blake2b512::digest(content), &self.signature),
        };
        ok.map_err(|_| MinisignError::BadSignature)?;
        self.verify_comment(key)?;
        Ok(self.trusted_comment)
    }

    fn verify_comment(&self, key: &PublicKey) -> Result<(), MinisignError> {
        let mut hasher_free = heapless::Vec::<u8, { 64 + MAX_COMMENT }>::new();
        hasher_free
            .extend_from_slice(&self.signature.to_bytes())
            .map_err(|()| MinisignError::Malformed)?;
        hasher_free
            .extend_from_slice(self.trusted_comment.as_bytes())
            .map_err(|()| MinisignError::BadTrustedComment)?;
        key.key
            .verify_strict(&hasher_free, &self.global)
            .map_err(|_| MinisignError::BadTrustedComment)
    }

    /// The trusted comment, not yet authenticated: only show it after `verify`.
    pub fn unverified_comment(&self) -> &'a str {
        self.trusted_comment
    }
}

/// Longest trusted comment accepted (minisign itself allows 1,024 bytes).
pub const MAX_COMMENT: usize = 1024;

#[cfg(feature = "alloc")]
mod signing {
    use alloc::string::String;
    use core::fmt::Write;

    use blake2::{Blake2b512, Digest};
    use ed25519_dalek::{Signer, SigningKey};

    use super::{
        Algorithm, KeyIdDisplay, MinisignError, PublicKey, MAX_COMMENT, TRUSTED, UNTRUSTED,
    };

    /// Signs `content` and returns the `.minisig` text, as `minisign -S` would.
    /// The trusted comment must be one line of at most `MAX_COMMENT` bytes.
    pub fn sign(
        key: &SigningKey,
        key_id: [u8; 8],
        algorithm: Algorithm,
        content: &[u8],
        trusted_comment: &str,
    ) -> Result<String, MinisignError> {
        if trusted_comment.len() > MAX_COMMENT || trusted_comment.contains(['\n', '\r']) {
            return Err(MinisignError::Malformed);
        }
        let sig = match algorithm {
            Algorithm::Legacy => key.sign(content),
            Algorithm::Prehashed => key.sign(&Blake2b512::digest(content)),
        };
        let mut raw = [0u8; 74];
        raw[..2].copy_from_slice(&algorithm.tag());
        raw[2..10].copy_from_slice(&key_id);
        raw[10..].copy_from_slice(&sig.to_bytes());
        let mut both = alloc::vec::Vec::with_capacity(64 + trusted_comment.len());
        both.extend_from_slice(&sig.to_bytes());
        both.extend_from_slice(trusted_comment.as_bytes());
        let global = key.sign(&both);
        let mut b1 = [0u8; 100];
        let mut b2 = [0u8; 88];
        let enc = |raw: &[u8], buf: &mut [u8]| -> Result<String, MinisignError> {
            <base64ct::Base64 as base64ct::Encoding>::encode(raw, buf)
                .map(String::from)
                .map_err(|_| MinisignError::Encoding)
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "{UNTRUSTED}signature from vigil secret key\n{}\n{TRUSTED}{trusted_comment}\n{}\n",
            enc(&raw, &mut b1)?,
            enc(&global.to_bytes(), &mut b2)?
        );
        Ok(out)
    }

    /// The secret key file text, as `minisign -G -W` writes it (no
    /// password: protect the file itself, mode 0600).
    pub fn secret_key_file(key: &super::SecretKey) -> Result<String, MinisignError> {
        let raw = key.to_raw();
        let mut b64 = [0u8; 212];
        let line = <base64ct::Base64 as base64ct::Encoding>::encode(&raw, &mut b64)
            .map_err(|_| MinisignError::Encoding)?;
        Ok(alloc::format!(
            "{UNTRUSTED}minisign secret key (no password)\n{line}\n"
        ))
    }

    /// The public key file text for `key`, as `minisign -G` writes it.
    pub fn public_key_file(key: &PublicKey) -> Result<String, MinisignError> {
        let mut line = [0u8; 56];
        key.to_base64(&mut line)?;
        let line = core::str::from_utf8(&line).map_err(|_| MinisignError::Encoding)?;
        let mut out = String::new();
        let _ = write!(
            out,
            "{UNTRUSTED}minisign public key {}\n{line}\n",
            KeyIdDisplay(key.key_id)
        );
        Ok(out)
    }
}

#[cfg(feature = "alloc")]
pub use signing::{public_key_file, secret_key_file, sign};

/// Raw secret key record: `Ed`, KDF `\0\0` (no password), checksum `B2`,
/// salt, opslimit, memlimit, key id, secret key (seed then public key), and
/// BLAKE2b-256 over algorithm, key id and secret key.
const SECRET_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/// A minisign secret key without a password (`minisign -G -W`, or ours).
pub struct SecretKey {
    pub key_id: [u8; 8],
    pub key: ed25519_dalek::SigningKey,
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretKey({})", KeyIdDisplay(self.key_id))
    }
}

fn secret_checksum(key_id: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    use blake2::digest::consts::U32;
    let mut h = blake2::Blake2b::<U32>::new();
    h.update(b"Ed");
    h.update(key_id);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    /// Parses a secret key file. Password-protected keys are refused with
    /// `EncryptedKey`: decrypting them needs scrypt, which the device binary
    /// does not carry.
    pub fn parse(text: &str) -> Result<Self, MinisignError> {
        let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
        if !lines
            .next()
            .ok_or(MinisignError::Malformed)?
            .starts_with(UNTRUSTED)
        {
            return Err(MinisignError::Malformed);
        }
        let b64 = lines.next().ok_or(MinisignError::Malformed)?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(MinisignError::Malformed);
        }
        let mut raw = [0u8; SECRET_LEN];
        decode_exact(b64.trim(), &mut raw)?;
        if raw.get(..2) != Some(b"Ed".as_slice()) || raw.get(4..6) != Some(b"B2".as_slice()) {
            return Err(MinisignError::Algorithm);
        }
        if raw.get(2..4) != Some([0u8, 0].as_slice()) {
            return Err(MinisignError::EncryptedKey);
        }
        let at = 2 + 2 + 2 + 32 + 8 + 8;
        let bad = |_| MinisignError::Encoding;
        let key_id: [u8; 8] = raw.get(at..at + 8).unwrap_or(&[]).try_into().map_err(bad)?;
        let sk: [u8; 64] = raw
            .get(at + 8..at + 72)
            .unwrap_or(&[])
            .try_into()
            .map_err(bad)?;
        let chk: [u8; 32] = raw.get(at + 72..).unwrap_or(&[]).try_into().map_err(bad)?;
        // minisign 0.11 leaves the checksum zero in keys made with `-W`.
        if chk != [0u8; 32] && secret_checksum(&key_id, &sk) != chk {
            return Err(MinisignError::Checksum);
        }
        // Also checks that the public half belongs to the seed.
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&sk)
            .map_err(|_| MinisignError::Checksum)?;
        Ok(SecretKey { key_id, key })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The raw record, as it goes into the file's base64 line.
    fn to_raw(&self) -> [u8; SECRET_LEN] {
        let sk = self.key.to_keypair_bytes();
        let chk = secret_checksum(&self.key_id, &sk);
        // Algorithm, no KDF, checksum algorithm, zero salt/opslimit/memlimit.
        let parts: [&[u8]; 7] = [b"Ed", &[0, 0], b"B2", &[0; 48], &self.key_id, &sk, &chk];
        let mut raw = [0u8; SECRET_LEN];
        for (o, b) in raw.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
            *o = *b;
        }
        raw
    }
}
