//! Cross-check against a real peer: Prometheus node_exporter (Debian
//! package `prometheus-node-exporter`, started here on a loopback port) and
//! `vigil-agent sample --json` read the same kernel counters. Each agent
//! reading is taken between two scrapes, so every counter must lie between
//! the two scraped values (tolerance: the 0.01 s rounding of CPU ticks);
//! MemTotal must match exactly, MemAvailable within 1 %.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::binary;

fn scrape(port: u16) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let mut m = HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

fn sum(m: &HashMap<String, f64>, prefix: &str, mode: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(&format!("mode=\"{mode}\"")))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn agent_counters_agree_with_node_exporter() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut ne = Command::new("prometheus-node-exporter")
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
            "--collector.netdev",
            "--collector.diskstats",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node_exporter is needed (apt-get install -y prometheus-node-exporter)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = scrape(port);
    let out = Command::new(binary("vigil-agent"))
        .args(["sample", "--json"])
        .output()
        .unwrap();
    let after = scrape(port);
    let _ = ne.kill();
    let _ = ne.wait();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let between = |what: &str, lo: f64, v: f64, hi: f64, slack: f64| {
        assert!(
            lo - slack <= v && v <= hi + slack,
            "{what}: agent {v} not within node_exporter [{lo}, {hi}] ± {slack}"
        );
    };
    let cpus = j["cpu"]["cpus"].as_f64().unwrap();
    for mode in ["user", "system", "idle", "iowait", "softirq", "steal"] {
        let v = j["cpu"][format!("{mode}_seconds")].as_f64().unwrap();
        let p = "node_cpu_seconds_total{";
        between(
            &format!("cpu {mode}"),
            sum(&before, p, mode),
            v,
            sum(&after, p, mode),
            0.01 * cpus + 1e-6,
        );
    }
    let mem = |m: &HashMap<String, f64>, k: &str| m[k];
    assert_eq!(
        j["memory"]["total_bytes"].as_f64().unwrap(),
        mem(&before, "node_memory_MemTotal_bytes")
    );
    let avail = j["memory"]["available_bytes"].as_f64().unwrap();
    let ne_avail = mem(&before, "node_memory_MemAvailable_bytes");
    assert!(
        (avail - ne_avail).abs() <= ne_avail * 0.01,
        "MemAvailable: agent {avail}, node_exporter {ne_avail}"
    );

    // node_exporter leaves out `lo` by default; every interface it reports must agree.
    let ifaces = j["network"].as_array().unwrap();
    let mut compared = 0;
    for i in ifaces {
        let name = i["name"].as_str().unwrap();
        if !before.contains_key(&format!(
            "node_network_receive_bytes_total{{device=\"{name}\"}}"
        )) {
            continue;
        }
        compared += 1;
        for (ours, theirs) in [
            ("rx_bytes", "node_network_receive_bytes_total"),
            ("rx_packets", "node_network_receive_packets_total"),
            ("tx_bytes", "node_network_transmit_bytes_total"),
            ("tx_packets", "node_network_transmit_packets_total"),
            ("rx_errors", "node_network_receive_errs_total"),
            ("tx_dropped", "node_network_transmit_drop_total"),
        ] {
            let key = format!("{theirs}{{device=\"{name}\"}}");
            let (Some(lo), Some(hi)) = (before.get(&key), after.get(&key)) else {
                panic!("node_exporter has no {key}");
            };
            between(
                &format!("{name} {ours}"),
                *lo,
                i[ours].as_f64().unwrap(),
                *hi,
                0.0,
            );
        }
    }
    assert!(compared >= 1, "no interface in common with node_exporter");
    for d in j["disk"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        for (ours, theirs) in [
            ("reads", "node_disk_reads_completed_total"),
            ("writes", "node_disk_writes_completed_total"),
        ] {
            let key = format!("{theirs}{{device=\"{name}\"}}");
            between(
                &format!("{name} {ours}"),
                before[&key],
                d[ours].as_f64().unwrap(),
                after[&key],
                0.0,
            );
        }
    }
}
