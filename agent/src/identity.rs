//! The device's identity: its ed25519 key (made on the device, never in an
//! image), kept in the state directory with mode 0600, and the boot counter
//! that numbers the agent's sequence spaces. Secrets are zeroized on drop
//! and never logged or printed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vigil_protocol::{DeviceId, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "device.key";
pub const BOOT_FILE: &str = "boot";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: a device key already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path}: no device key; run `vigil-agent keygen --state-dir {dir}` first")]
    Missing { path: PathBuf, dir: String },
    #[error(
        "{path}: key file is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a Vigil device key")]
    Malformed { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the device key in `state_dir` (mode 0600; the directory 0700 if
/// it is created). Refuses to overwrite an existing key.
pub fn keygen(state_dir: &Path) -> Result<VerifyingKey, IdentityError> {
    fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let path = state_dir.join(KEY_FILE);
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(seed.as_mut()).map_err(IdentityError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let mut text = Zeroizing::new(String::with_capacity(80));
    text.push_str("vigil-device-key 1\n");
    for b in seed.iter() {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('\n');
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists { path: path.clone() }
            } else {
                IdentityError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&path))?;
    Ok(key.verifying_key())
}

/// Loads the device key, refusing one that group or others can read.
pub fn load(state_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = state_dir.join(KEY_FILE);
    let meta = match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::Missing {
                path,
                dir: state_dir.display().to_string(),
            })
        }
        other => other.map_err(io(&path))?,
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path, mode });
    }
    let text = Zeroizing::new(fs::read_to_string(&path).map_err(io(&path))?);
    let malformed = || IdentityError::Malformed { path: path.clone() };
    let hex = text
        .strip_prefix("vigil-device-key 1\n")
        .and_then(|r| r.strip_suffix('\n'))
        .ok_or_else(malformed)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    if hex.len() != 64 {
        return Err(malformed());
    }
    for (i, out) in seed.iter_mut().enumerate() {
        let pair = hex.get(i * 2..i * 2 + 2).ok_or_else(malformed)?;
        *out = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// What `vigil-agent id` prints: the device id and the public key in the
/// form `vigil-collector enroll --key` takes.
pub fn describe(key: &VerifyingKey) -> String {
    let mut pk = String::new();
    let _ = vigil_protocol::frame::write_public_key(&mut pk, key);
    format!("device {}\nkey {pk}\n", DeviceId::of(key))
}

/// The boot counter as it stands (0 when there is none or it is unreadable).
pub fn current_boot(state_dir: &Path) -> u32 {
    fs::read_to_string(state_dir.join(BOOT_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Increments and persists the boot counter (write, fsync, rename) before
/// anything is sent, so each agent start has a new, larger sequence space.
pub fn next_boot(state_dir: &Path) -> Result<u32, IdentityError> {
    let path = state_dir.join(BOOT_FILE);
    let current = match fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse::<u32>()
            .map_err(|_| IdentityError::Malformed { path: path.clone() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(IdentityError::Io { path, source: e }),
    };
    let next = current
        .checked_add(1)
        .ok_or_else(|| IdentityError::Malformed { path: path.clone() })?;
    let tmp = state_dir.join(".boot.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(format!("{next}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(dir) = fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(next)
}
