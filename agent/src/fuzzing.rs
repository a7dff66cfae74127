//! Entry points shared by the cargo-fuzz targets in `agent/fuzz/` and the
//! test that replays their committed corpus (`tests/fuzz_corpus.rs`): each
//! takes arbitrary bytes and must neither panic nor break the invariant it
//! checks. Not part of the agent's API.

use crate::sample::{
    diskstats, loadavg, meminfo, net_dev, pressure, proc_stat, sock_diag, sockets, uptime,
};

/// Every /proc parser on the same bytes (as text where the kernel writes
/// text), the netlink socket-table parser on them as a datagram, and the
/// `sshd -T` and wildcard matchers used by the posture checks.
pub fn proc_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut issues = Vec::new();
    let _ = proc_stat::parse(&text, &mut issues);
    let _ = meminfo::parse(&text, &mut issues);
    for d in diskstats::parse(&text, &mut issues) {
        // Only whole disks are reported.
        assert!(diskstats::is_whole_disk(&d.name), "{:?}", d.name);
    }
    let _ = net_dev::parse(&text, &mut issues);
    let _ = pressure::parse("pressure/cpu", &text, &mut issues);
    let _ = loadavg::parse(&text, &mut issues);
    let _ = uptime::parse(&text, &mut issues);
    for line in text.lines() {
        let _ = sockets::parse_row(line);
    }
    let _ = sockets::comm_from_stat(&text);
    let mut rows = Vec::new();
    let _ = sock_diag::parse_datagram(data, &mut rows);
    let _ = sock_diag::parse_msg(data);
    let _ = crate::posture::parse_sshd_t(&text);
    let _ = crate::posture::release_numbers(&text);
    if let Some((pattern, s)) = text.split_once('\n') {
        let _ = crate::posture::wildcard(pattern, s);
    }
}

/// The agent's configuration file: parsed, then validated as `run` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::config::Config::parse(text) {
        let _ = c.validate();
        let _ = c.validate_local();
        if let Some(col) = &c.collector {
            if let Some(p) = &col.pin_sha256 {
                let _ = crate::config::parse_pin(p);
            }
        }
    }
}
