//! `vigil-collector serve`'s flags laid over the configuration file. A bad
//! value is bad configuration (exit 78) naming its flag, like a bad field
//! in the file.

use super::args::Serve;
use super::bad_config;
use crate::access;
use crate::config::{self, Config, Sink, Transport};

/// `--name N`: a number, or bad configuration.
fn number<T: std::str::FromStr>(name: &str, v: &Option<String>) -> anyhow::Result<Option<T>> {
    v.as_deref()
        .map(|v| {
            v.parse()
                .map_err(|_| bad_config(format!("--{name}: `{v}` is not a valid number")))
        })
        .transpose()
}

fn addr(name: &str, v: &str) -> anyhow::Result<std::net::SocketAddr> {
    v.parse().map_err(|_| {
        bad_config(format!(
            "--{name}: `{v}` is not HOST:PORT (an IP address and port)"
        ))
    })
}

fn net_sink(name: &str, v: &str) -> anyhow::Result<(std::net::SocketAddr, Transport)> {
    match v.strip_suffix("/tcp") {
        Some(a) => Ok((addr(name, a)?, Transport::Tcp)),
        None => Ok((
            addr(name, v.strip_suffix("/udp").unwrap_or(v))?,
            Transport::Udp,
        )),
    }
}

/// The configuration `serve` runs with: the file's, each flag over it.
pub fn config(mut cfg: Config, a: &Serve) -> anyhow::Result<Config> {
    cfg.new_archive = a.new;
    if let Some(v) = &a.listen {
        cfg.listen = Some(addr("listen", v)?);
    }
    if a.no_tls {
        cfg.listen = None;
    }
    if let Some(v) = &a.tls_cert {
        cfg.tls_cert = Some(v.clone());
    }
    if let Some(v) = &a.tls_key {
        cfg.tls_key = Some(v.clone());
    }
    if let Some(v) = &a.plain_listen {
        cfg.plain_listen = Some(addr("plain-listen", v)?);
    }
    if a.insecure_plaintext {
        cfg.insecure_plaintext = true;
    }
    for s in &a.serial {
        let (dev, baud) = match s.rsplit_once(':') {
            Some((d, b)) if b.chars().all(|c| c.is_ascii_digit()) && !b.is_empty() => (
                d.to_string(),
                b.parse()
                    .map_err(|_| bad_config(format!("--serial: bad baud in `{s}`")))?,
            ),
            _ => (s.clone(), 115_200),
        };
        cfg.serial.push(config::SerialPort {
            device: dev.into(),
            baud,
        });
    }
    if let Some(v) = &a.metrics_listen {
        cfg.metrics_listen = Some(addr("metrics-listen", v)?);
    }
    if let Some(v) = number("retention-days", &a.retention_days)? {
        cfg.retention_days = v;
    }
    if let Some(v) = number("rollup-every-s", &a.rollup_every_s)? {
        cfg.rollup_every_s = v;
    }
    if let Some(v) = number("silence-s", &a.silence_s)? {
        cfg.silence_s = v;
    }
    if let Some(v) = number("loss-grace-s", &a.loss_grace_s)? {
        cfg.loss_grace_s = v;
    }
    if let Some(v) = number("clock-skew-s", &a.clock_skew_s)? {
        cfg.clock_skew_s = v;
    }
    if let Some(v) = number("max-connections", &a.max_connections)? {
        cfg.limits.max_connections = v;
    }
    if let Some(v) = number("frames-per-s", &a.frames_per_s)? {
        cfg.limits.frames_per_s = v;
    }
    if let Some(v) = number("idle-timeout-s", &a.idle_timeout_s)? {
        cfg.limits.idle_timeout_s = v;
    }
    if let Some(v) = number("handshake-timeout-s", &a.handshake_timeout_s)? {
        cfg.limits.handshake_timeout_s = v;
    }
    if let Some(v) = number("unknown-per-minute", &a.unknown_per_minute)? {
        cfg.limits.unknown_per_minute = v;
    }
    if let Some(v) = number("baseline-period-s", &a.baseline_period_s)? {
        cfg.detect.baseline_period_s = v;
    }
    if !a.internal_prefix.is_empty() {
        cfg.detect.internal_prefixes = a.internal_prefix.clone();
    }
    cfg.detect
        .allow_outbound
        .extend(a.allow_outbound.iter().cloned());
    cfg.detect
        .allow_lateral
        .extend(a.allow_lateral.iter().cloned());
    cfg.detect
        .unwatched_metrics
        .extend(a.unwatched_metric.iter().cloned());
    if let Some(v) = number("max-pending", &a.max_pending)? {
        cfg.limits.max_pending = v;
    }
    if let Some(v) = number(
        "max-connections-per-address",
        &a.max_connections_per_address,
    )? {
        cfg.limits.max_connections_per_address = v;
    }
    if let Some(v) = number("device-frames-per-s", &a.device_frames_per_s)? {
        cfg.limits.device_frames_per_s = v;
    }
    if let Some(v) = number("device-bytes-per-s", &a.device_bytes_per_s)? {
        cfg.limits.device_bytes_per_s = v;
    }
    if let Some(v) = number("max-pending-per-address", &a.max_pending_per_address)? {
        cfg.limits.max_pending_per_address = v;
    }
    if let Some(v) = number(
        "unknown-per-address-per-minute",
        &a.unknown_per_address_per_minute,
    )? {
        cfg.limits.unknown_per_address_per_minute = v;
    }
    for v in &a.sink_json {
        cfg.sinks.push(Sink::Json { path: v.into() });
    }
    for v in &a.sink_syslog {
        let (address, transport) = net_sink("sink-syslog", v)?;
        cfg.sinks.push(Sink::Syslog { address, transport });
    }
    for v in &a.sink_cef {
        let stripped = v
            .strip_suffix("/tcp")
            .or_else(|| v.strip_suffix("/udp"))
            .unwrap_or(v);
        if stripped.parse::<std::net::SocketAddr>().is_ok() {
            let (address, transport) = net_sink("sink-cef", v)?;
            cfg.sinks.push(Sink::Cef {
                address: Some(address),
                transport,
                path: None,
            });
        } else {
            cfg.sinks.push(Sink::Cef {
                address: None,
                transport: Transport::Udp,
                path: Some(v.into()),
            });
        }
    }
    cfg.validate().map_err(bad_config)?;
    // The time zone needs the zone database, which `config` does not link.
    access::Policy::new(&cfg.access).map_err(bad_config)?;
    Ok(cfg)
}
