//! Interoperability with the real `minisign` tool (Debian package
//! `minisign`, installed by `.ci/run`): its signatures verify here, with both
//! algorithms, and ours verify there. Fails, naming the package, when the
//! tool is missing: this test is the reason the format is minisign's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use common::testdata;
use vigil_protocol::minisign::{
    public_key_file, sign, Algorithm, MinisignError, PublicKey, SignatureFile,
};
use vigil_protocol::SigningKey;

fn minisign(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .expect("the `minisign` tool is needed (apt-get install -y minisign)");
    out
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-minisign-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A key pair made by `minisign -G` without a password.
fn minisign_keypair(dir: &Path, stem: &str) -> PublicKey {
    let (p, s) = (format!("{stem}.pub"), format!("{stem}.key"));
    let out = minisign(dir, &["-G", "-W", "-p", &p, "-s", &s]);
    assert!(
        out.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PublicKey::parse(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap()
}

#[test]
fn manifests_signed_by_minisign_verify_with_both_algorithms() {
    let dir = tempdir("theirs");
    let manifest = std::fs::read(testdata("manifests/example.manifest")).unwrap();
    std::fs::write(dir.join("m"), &manifest).unwrap();
    let pk = minisign_keypair(&dir, "vendor");
    let other = minisign_keypair(&dir, "other");
    for (flag, alg) in [
        (None, Algorithm::Prehashed),
        (Some("-l"), Algorithm::Legacy),
    ] {
        let mut args = vec![
            "-S",
            "-s",
            "vendor.key",
            "-m",
            "m",
            "-t",
            "manifest ct9000-firmware v42",
        ];
        args.extend(flag);
        let out = minisign(&dir, &args);
        assert!(
            out.status.success(),
            "minisign -S: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig_text = std::fs::read_to_string(dir.join("m.minisig")).unwrap();
        let sig = SignatureFile::parse(&sig_text).unwrap();
        assert_eq!(sig.algorithm, alg);
        assert_eq!(
            sig.verify(&pk, &manifest),
            Ok("manifest ct9000-firmware v42")
        );
        // A changed byte fails.
        let mut changed = manifest.clone();
        changed[40] ^= 1;
        assert_eq!(sig.verify(&pk, &changed), Err(MinisignError::BadSignature));
        // A key it was not signed with fails.
        assert_eq!(
            sig.verify(&other, &manifest),
            Err(MinisignError::KeyMismatch)
        );
        let mut same_id = other.clone();
        same_id.key_id = pk.key_id;
        assert_eq!(
            sig.verify(&same_id, &manifest),
            Err(MinisignError::BadSignature)
        );
        // An edited trusted comment fails.
        let edited = sig_text.replace("v42", "v43");
        assert_eq!(
            SignatureFile::parse(&edited)
                .unwrap()
                .verify(&pk, &manifest),
            Err(MinisignError::BadTrustedComment)
        );
    }
}

#[test]
fn minisign_accepts_our_signatures_and_keys() {
    let dir = tempdir("ours");
    let manifest = std::fs::read(testdata("manifests/example.manifest")).unwrap();
    std::fs::write(dir.join("m"), &manifest).unwrap();
    let sk = SigningKey::from_bytes(&[42; 32]);
    let pk = PublicKey {
        key_id: *b"vigil-01",
        key: sk.verifying_key(),
    };
    std::fs::write(dir.join("ours.pub"), public_key_file(&pk).unwrap()).unwrap();
    assert_eq!(
        PublicKey::parse(&public_key_file(&pk).unwrap()).unwrap(),
        pk
    );
    for alg in [Algorithm::Prehashed, Algorithm::Legacy] {
        let sig = sign(
            &sk,
            pk.key_id,
            alg,
            &manifest,
            "timestamp:1795946400\tfile:m",
        )
        .unwrap();
        std::fs::write(dir.join("m.minisig"), &sig).unwrap();
        let out = minisign(&dir, &["-V", "-p", "ours.pub", "-m", "m"]);
        assert!(
            out.status.success(),
            "minisign -V ({alg:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout)
            .contains("Trusted comment: timestamp:1795946400\tfile:m"));
        // And minisign rejects a changed byte, as we do.
        let mut changed = manifest.clone();
        changed[40] ^= 1;
        std::fs::write(dir.join("m2"), &changed).unwrap();
        std::fs::write(dir.join("m2.minisig"), &sig).unwrap();
        assert!(!minisign(&dir, &["-V", "-p", "ours.pub", "-m", "m2"])
            .status
            .success());
        assert!(SignatureFile::parse(&sig)
            .unwrap()
            .verify(&pk, &changed)
            .is_err());
    }
    // The bare base64 line (`minisign -P`) parses too.
    let line = public_key_file(&pk)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(PublicKey::parse(&line).unwrap(), pk);
}

#[test]
fn malformed_keys_and_signatures_are_rejected() {
    assert_eq!(PublicKey::parse("").err(), Some(MinisignError::Malformed));
    assert_eq!(
        PublicKey::parse("untrusted comment: x\nnot base64!").err(),
        Some(MinisignError::Encoding)
    );
    assert_eq!(
        PublicKey::parse("untrusted comment: x\nRWQ=").err(),
        Some(MinisignError::Encoding)
    );
    let sk = SigningKey::from_bytes(&[42; 32]);
    let pk = PublicKey {
        key_id: [1; 8],
        key: sk.verifying_key(),
    };
    let sig = sign(&sk, pk.key_id, Algorithm::Prehashed, b"x", "c").unwrap();
    let lines: Vec<&str> = sig.lines().collect();
    assert_eq!(
        SignatureFile::parse(&lines[..3].join("\n")).err(),
        Some(MinisignError::Malformed)
    );
    assert_eq!(
        SignatureFile::parse(&sig.replacen("untrusted", "trusted", 1)).err(),
        Some(MinisignError::Malformed)
    );
    assert_eq!(
        SignatureFile::parse(&(sig.clone() + "extra\n")).err(),
        Some(MinisignError::Malformed)
    );
    // An unknown algorithm tag ("Ex").
    use base64ct::{Base64, Encoding};
    let mut raw = Base64::decode_vec(lines[1]).unwrap();
    raw[1] = b'x';
    let bad = sig.replace(lines[1], &Base64::encode_string(&raw));
    assert_eq!(
        SignatureFile::parse(&bad).err(),
        Some(MinisignError::Algorithm)
    );
    assert_eq!(
        sign(&sk, pk.key_id, Algorithm::Legacy, b"x", "two\nlines").err(),
        Some(MinisignError::Malformed)
    );
}

/// Secret key files: ours parse back; minisign's `-W` keys (zero checksum)
/// parse and give the same public key; a corrupted one and a
/// password-protected one are refused with their own errors.
#[test]
fn secret_key_files_round_trip_and_read_minisigns() {
    use vigil_protocol::minisign::{secret_key_file, SecretKey};
    let sk = SecretKey {
        key_id: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        key: SigningKey::from_bytes(&[7u8; 32]),
    };
    let text = secret_key_file(&sk).unwrap();
    let back = SecretKey::parse(&text).unwrap();
    assert_eq!(back.key_id, sk.key_id);
    assert_eq!(back.key.to_bytes(), sk.key.to_bytes());

    // Flip one bit of the secret inside the base64: the checksum catches it.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut raw = [0u8; 158];
    <base64ct::Base64 as base64ct::Encoding>::decode(&lines[1], &mut raw)
        .map(|_| ())
        .unwrap();
    raw[70] ^= 1;
    let mut buf = [0u8; 212];
    lines[1] = <base64ct::Base64 as base64ct::Encoding>::encode(&raw, &mut buf)
        .unwrap()
        .to_string();
    assert_eq!(
        SecretKey::parse(&lines.join("\n")).unwrap_err(),
        MinisignError::Checksum
    );
    // KDF "Sc": protected by a password.
    raw[70] ^= 1;
    raw[2..4].copy_from_slice(b"Sc");
    lines[1] = <base64ct::Base64 as base64ct::Encoding>::encode(&raw, &mut buf)
        .unwrap()
        .to_string();
    assert_eq!(
        SecretKey::parse(&lines.join("\n")).unwrap_err(),
        MinisignError::EncryptedKey
    );

    let dir = tempdir("secret");
    let public = minisign_keypair(&dir, "m");
    let theirs = SecretKey::parse(&std::fs::read_to_string(dir.join("m.key")).unwrap()).unwrap();
    assert_eq!(theirs.public(), public);
}
