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

/// How long `read` waits before reporting no data.
pub const POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Opens the link the configuration names.
    pub fn open(cfg: &Config) -> Result<Link, LinkError> {
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
            .ok_or_else(|| LinkError::Tls("no [collector] configured".into()))?;
        let tcp = connect(&c.address)?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(POLL)).ok();
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

    /// Finishes the TLS handshake (so a bad pin fails here, not later).
    pub fn handshake(&mut self) -> io::Result<()> {
        if let Link::Tls(s) = self {
            s.sock.set_read_timeout(Some(CONNECT_TIMEOUT)).ok();
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            s.sock.set_read_timeout(Some(POLL)).ok();
        }
        Ok(())
    }
}

fn connect(address: &str) -> Result<TcpStream, LinkError> {
    let addrs = address
        .to_socket_addrs()
        .map_err(|source| LinkError::Connect {
            address: address.into(),
            source,
        })?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
