//! A stand-in collector for benchmarks: TLS 1.3 on a loopback port with a
//! fresh self-signed certificate, verifies and acks the agent's frames, and
//! counts the bytes that crossed the socket (TLS records included).
//!
//! usage: vigil-bench-receiver PUBKEY PORT_FILE PIN_FILE BYTES_FILE
//! Writes the port and certificate pin, then the byte count every second.

#![allow(clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vigil_tests::receiver::{certificate, serve, Log, Policy};

struct Counting<S> {
    inner: S,
    count: Arc<AtomicU64>,
}

impl<S: Read> Read for Counting<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<S: Write> Write for Counting<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, port_file, pin_file, bytes_file] = args.as_slice() else {
        eprintln!("usage: vigil-bench-receiver PUBKEY PORT_FILE PIN_FILE BYTES_FILE");
        std::process::exit(2);
    };
    let key = vigil_protocol::frame::parse_public_key(key).expect("public key");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (cert, pkey, pin) = certificate();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert], pkey)
        .expect("config"),
    );
    std::fs::write(pin_file, &pin).expect("pin file");
    std::fs::write(
        port_file,
        listener.local_addr().expect("addr").port().to_string(),
    )
    .expect("port file");
    let count = Arc::new(AtomicU64::new(0));
    {
        let (count, bytes_file) = (Arc::clone(&count), bytes_file.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let _ = std::fs::write(&bytes_file, count.load(Ordering::Relaxed).to_string());
        });
    }
    let log = Arc::new(Log::default());
    for tcp in listener.incoming().flatten() {
        let (config, log, count) = (Arc::clone(&config), Arc::clone(&log), Arc::clone(&count));
        std::thread::spawn(move || {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            let stream = rustls::StreamOwned::new(conn, Counting { inner: tcp, count });
            serve(stream, &key, &log, Policy::default(), false);
        });
    }
}
