//! The collector's TLS identity and server configuration: TLS 1.3 only,
//! rustls with ring. Without a configured certificate, a self-signed
//! Ed25519 one is created once in the state dir (agents pin its SHA-256;
//! they verify Ed25519 and RSA certificates, not ECDSA).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("creating a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Hex SHA-256 of the leaf certificate (DER): what agents pin.
    pub pin: String,
    /// Whether it was created just now.
    pub created: bool,
}

pub fn pin_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Loads the configured certificate and key, or the state dir's own,
/// creating that one on first start.
pub fn identity(
    state_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Identity, TlsError> {
    let (cert_path, key_path, created) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned(), false),
        _ => {
            let dir = state_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let created = !c.exists();
            if created {
                generate(&dir, &c, &k)?;
            }
            (c, k, created)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(file_err(&cert_path, "no certificate in the file"));
    };
    let pin = pin_of(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    Ok(Identity {
        chain,
        key,
        pin,
        created,
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "vigil-collector".into());
    let mut names = vec![host, "localhost".to_string()];
    names.dedup();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vigil-collector");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    // Long-lived on purpose: agents pin this exact certificate.
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let c = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut kf = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| file_err(key, e))?;
    kf.write_all(key_pair.serialize_pem().as_bytes())
        .and_then(|()| kf.sync_all())
        .map_err(|e| file_err(key, e))?;
    std::fs::write(cert, c.pem()).map_err(|e| file_err(cert, e))?;
    Ok(())
}

/// TLS 1.3 only; no client certificates (devices authenticate by signing
/// every frame).
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(cfg))
}
