//! The vendor-side manifest commands (`vigil-agent manifest ...`): key
//! generation, build, sign, verify. The device runs the same code.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vigil_protocol::manifest::Manifest;
use vigil_protocol::minisign::{self, Algorithm, PublicKey, SecretKey};

use super::trust::{self, Keys, Refused, Versions};
use super::Found;

fn create_new(path: &Path, mode: u32, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Creates a minisign key pair without a password (the secret key file is
/// 0600 and never overwritten). Returns the key id as minisign prints it.
pub fn keygen(secret: &Path, public: &Path) -> anyhow::Result<String> {
    for p in [secret, public] {
        if p.exists() {
            anyhow::bail!("{} exists: refusing to overwrite a key", p.display());
        }
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    let mut key_id = [0u8; 8];
    getrandom::getrandom(seed.as_mut())?;
    getrandom::getrandom(&mut key_id)?;
    let sk = SecretKey {
        key_id,
        key: vigil_protocol::SigningKey::from_bytes(&seed),
    };
    let sk_text = zeroize::Zeroizing::new(
        minisign::secret_key_file(&sk).map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    let pk_text = minisign::public_key_file(&sk.public()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    create_new(secret, 0o600, &sk_text)?;
    create_new(public, 0o644, &pk_text)?;
    Ok(minisign::KeyIdDisplay(key_id).to_string())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Signs a manifest as `minisign -S` does (prehashed `ED`, trusted comment
/// with the time and file name) into `MANIFEST.minisig`.
pub fn sign(secret: &Path, manifest: &Path, now_s: u64) -> anyhow::Result<std::path::PathBuf> {
    let text = zeroize::Zeroizing::new(read_text(secret)?);
    let sk = SecretKey::parse(&text).map_err(|e| match e {
        minisign::MinisignError::EncryptedKey => anyhow::anyhow!(
            "{}: the key is password-protected; sign with `minisign -S -s {0} -m MANIFEST` \
             (the result is the same), or make an unprotected key with `vigil-agent manifest keygen`",
            secret.display()
        ),
        other => anyhow::anyhow!("{}: not a minisign secret key ({other:?})", secret.display()),
    })?;
    let bytes =
        std::fs::read(manifest).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
    Manifest::parse(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a manifest, not signing it: {e}",
            manifest.display()
        )
    })?;
    let name = manifest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let comment = format!("timestamp:{now_s}\tfile:{name}\thashed");
    let sig = minisign::sign(&sk.key, sk.key_id, Algorithm::Prehashed, &bytes, &comment)
        .map_err(|e| anyhow::anyhow!("signing: {e:?}"))?;
    let out = trust::sig_path(manifest);
    std::fs::write(&out, sig).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The outcome of `manifest verify`.
#[derive(Debug)]
pub struct Verified {
    pub checked: usize,
    pub findings: Vec<Found>,
}

/// Verifies `manifest`'s signature with `public` and checks `root` against
/// it. A bad signature, an untrusted key or an unreadable manifest is an
/// error: the findings of an unauthenticated manifest mean nothing.
pub fn verify(
    public: &Path,
    root: &Path,
    manifest: &Path,
    threads: usize,
) -> anyhow::Result<Verified> {
    let key = PublicKey::parse(&read_text(public)?)
        .map_err(|e| anyhow::anyhow!("{}: not a minisign public key ({e:?})", public.display()))?;
    let keys = Keys(vec![key]);
    let mut versions = Versions::none();
    let m = match trust::open(manifest, &keys, &mut versions) {
        Ok(m) => m,
        Err(Refused::Unusable(why)) => anyhow::bail!("{why}"),
        Err(Refused::Finding(r)) => {
            let why = r.findings.first().map_or_else(String::new, super::describe);
            anyhow::bail!("{why}")
        }
    };
    if !root.is_dir() {
        anyhow::bail!("--root {}: not a directory", root.display());
    }
    let findings = super::check(root, &m, threads);
    Ok(Verified {
        checked: m.entries.len(),
        findings,
    })
}
