//! Sinks: the byte links frames travel over — TCP with TLS 1.3 only
//! (rustls, the collector's certificate pinned by SHA-256 or checked against
//! a CA file), plain TCP when explicitly configured as insecure, or a serial
//! port. The same COBS frames on all of them. Knows nothing of frames.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

use crate::config::{self, Collector, Config};

/// How long `read` waits before reporting no data: also the longest a new
/// frame waits before it is sent (far inside the 10 s latency budget), and
/// what keeps an idle link thread to one wake-up a second.
pub const POLL: Duration = Duration::from_millis(1000);
/// Connecting and the TLS handshake each wait at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that cannot hand a byte to the kernel for this long means the
/// peer stopped reading (a hung collector host: its kernel acked until the
/// socket buffers filled): the link is dropped and opened again. Inside the
/// 5 s flush budget a SIGTERM has.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
/// The socket's send buffer, fixed (the kernel doubles it for its own
/// bookkeeping) instead of autotuned up to megabytes: what a hung collector
/// can swallow before the agent's writes stall, and still far above what a
/// device sends in a round trip (a backlog resend included).
const SEND_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("{address}: no address")]
    Resolve { address: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("{device}: {source}")]
    Serial {
        device: String,
        source: serialport::Error,
    },
}

pub enum Link {
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Plain(TcpStream),
    Serial(Box<dyn serialport::SerialPort>),
}

impl Link {
    /// Opens the link the configuration names (for TCP, its collector
    /// `endpoint`: 0 the primary, then the failovers in order), connecting
    /// for at most `connect` (`CONNECT_TIMEOUT`, less while stopping).
    pub fn open(
        cfg: &Config,
        endpoint: usize,
        connect_within: Duration,
    ) -> Result<Link, LinkError> {
        if let Some(s) = &cfg.serial {
            let device = s.device.display().to_string();
            let port = serialport::new(device.clone(), s.baud)
                .timeout(POLL)
                .open()
                .map_err(|source| LinkError::Serial { device, source })?;
            return Ok(Link::Serial(port));
        }
        let c = cfg
            .collector
            .as_ref()
            .map(Collector::endpoints)
            .and_then(|mut all| (endpoint < all.len()).then(|| all.swap_remove(endpoint)))
            .ok_or_else(|| LinkError::Tls("no [collector] configured".into()))?;
        let c = &c;
        let tcp = connect(&c.address, connect_within)?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(POLL)).ok();
        tcp.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
        {
            use std::os::fd::AsRawFd;
            let _ = nix::sys::socket::setsockopt(
                tcp.as_raw_fd(),
                nix::sys::socket::sockopt::SndBuf,
                &SEND_BUFFER,
            );
        }
        if c.insecure_plaintext {
            log::warn!(
                "{}: sending over plain TCP without TLS (insecure_plaintext = true)",
                c.address
            );
            return Ok(Link::Plain(tcp));
        }
        let conn = ClientConnection::new(tls_config(c)?, server_name(c)?)
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        Ok(Link::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Reads what is there, waiting at most `POLL`; `Ok(0)` means nothing
    /// yet, an error or end of stream means the link is gone.
    pub fn poll_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match self {
            Link::Tls(s) => s.read(buf),
            Link::Plain(s) => s.read(buf),
            Link::Serial(s) => s.read(buf),
        };
        match r {
            Ok(0) if !matches!(self, Link::Serial(_)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Link::Tls(s) => s.write_all(data).and_then(|()| s.flush()),
            Link::Plain(s) => s.write_all(data),
            Link::Serial(s) => s.write_all(data).and_then(|()| s.flush()),
        }
    }

    /// How long a write may wait for the peer: `WRITE_TIMEOUT`, or less
    /// while stopping (what is left of the flush budget). Serial ports keep
    /// their own timeout.
    pub fn set_write_timeout(&mut self, d: Duration) {
        let d = d.max(Duration::from_millis(10));
        match self {
            Link::Tls(s) => s.sock.set_write_timeout(Some(d)).ok(),
            Link::Plain(s) => s.set_write_timeout(Some(d)).ok(),
            Link::Serial(_) => None,
        };
    }

    /// Finishes the TLS handshake (so a bad pin fails here, not later),
    /// waiting at most `within` for the collector's answers.
    pub fn handshake(&mut self, within: Duration) -> io::Result<()> {
        if let Link::Tls(s) = self {
            s.sock
                .set_read_timeout(Some(within.max(Duration::from_millis(10))))
                .ok();
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            s.sock.set_read_timeout(Some(POLL)).ok();
        }
        Ok(())
    }
}

fn connect(address: &str, within: Duration) -> Result<TcpStream, LinkError> {
    let within = within.clamp(Duration::from_millis(10), CONNECT_TIMEOUT);
    let addrs = address
        .to_socket_addrs()
        .map_err(|source| LinkError::Connect {
            address: address.into(),
            source,
        })?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, within) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => LinkError::Connect {
            address: address.into(),
            source,
        },
        None => LinkError::Resolve {
            address: address.into(),
        },
    })
}

fn server_name(c: &Collector) -> Result<ServerName<'static>, LinkError> {
    let host = match &c.server_name {
        Some(n) => n.clone(),
        None => c
            .address
            .rsplit_once(':')
            .map_or(c.address.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_string(),
    };
    ServerName::try_from(host).map_err(|e| LinkError::Tls(format!("server name: {e}")))
}

/// The agent's TLS crypto: TLS 1.3 suites, X25519 key exchange, and
/// certificate signatures by Ed25519 or RSA. ECDSA and the NIST curves are
/// left out on purpose: their precomputed tables alone are ~150 KB of a
/// binary that must stay under 1.5 MiB (cross/README.md, "Release profile"). The agent
/// has no client key, so it loads none.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, kx_group};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use webpki::ring as alg;
    static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
        ],
        mapping: &[
            (SignatureScheme::ED25519, &[alg::ED25519]),
            (
                SignatureScheme::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA256,
                &[alg::RSA_PKCS1_2048_8192_SHA256],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA384,
                &[alg::RSA_PKCS1_2048_8192_SHA384],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA512,
                &[alg::RSA_PKCS1_2048_8192_SHA512],
            ),
        ],
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        kx_groups: vec![kx_group::X25519],
        signature_verification_algorithms: ALGORITHMS,
        secure_random: &OsRandom,
        key_provider: &NoKeys,
    })
}

#[derive(Debug)]
struct OsRandom;

impl rustls::crypto::SecureRandom for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        getrandom::getrandom(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

#[derive(Debug)]
struct NoKeys;

impl rustls::crypto::KeyProvider for NoKeys {
    fn load_private_key(
        &self,
        _key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "the agent has no TLS client key".into(),
        ))
    }
}

/// TLS 1.3 only, verifying the collector by pin or by CA file.
pub fn tls_config(c: &Collector) -> Result<Arc<ClientConfig>, LinkError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let cfg = if let Some(pin) = &c.pin_sha256 {
        let pin = config::parse_pin(pin).ok_or_else(|| LinkError::Tls("bad pin_sha256".into()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin,
                provider: provider(),
            }))
            .with_no_client_auth()
    } else if let Some(ca) = &c.ca_file {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| LinkError::Tls(format!("{}: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| LinkError::Tls(format!("{}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| LinkError::Tls(format!("{}: {e}", ca.display())))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        return Err(LinkError::Tls("neither pin_sha256 nor ca_file".into()));
    };
    Ok(Arc::new(cfg))
}

/// Accepts exactly the certificate whose SHA-256 is pinned; the handshake
/// signature is still verified against it.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "collector certificate does not match the pinned SHA-256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
