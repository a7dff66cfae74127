//! The /proc parsers on real snapshots from other machines (aarch64 servers,
//! a 32-bit ARM board, 2.6/3.x/4.x kernels; `testdata/proc-fixtures/README.md`
//! has their provenance): every set yields what its files contain, odd or
//! missing files yield partial readings and named issues, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use vigil_agent::sample::reading::{self, Differ, Layout};
use vigil_agent::sample::{diskstats, loadavg, meminfo, net_dev, pressure, proc_stat, Issue};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/proc-fixtures")
        .join(rel)
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap()
}

#[test]
fn proc_stat_on_aarch64_arm32_and_old_kernels() {
    let mut issues = Vec::new();
    let s = proc_stat::parse(&text("kunpeng920-aarch64-5.15/proc/stat"), &mut issues);
    let c = s.cpu.unwrap();
    assert_eq!(
        (c.user, c.nice, c.system, c.idle, c.iowait, c.irq, c.softirq, c.steal),
        (28787, 0, 5114, 2750335, 2853, 176, 121, 0)
    );
    assert!(s.cpus >= 2);
    assert!(issues.is_empty(), "{issues:?}");

    let s = proc_stat::parse(&text("u8500-armv7-32bit-old/proc/stat"), &mut issues);
    assert_eq!(s.cpu.unwrap().system, 1673);
    assert_eq!(s.cpus, 2);

    // 2.6 kernels: 8 columns (no guest) still parse, steal included.
    let s = proc_stat::parse(&text("misc/x86_64-2.6-stat8cols/proc/stat"), &mut issues);
    assert_eq!(s.cpu.unwrap().idle, 12_839_786_658);
    assert!(issues.is_empty(), "{issues:?}");

    // Fewer than the modern columns: missing states read as 0, no issue.
    let s = proc_stat::parse("cpu  10 1 5 100\nbtime 1700000000\n", &mut issues);
    assert_eq!(s.cpu.unwrap().iowait, 0);
    assert_eq!(s.btime, Some(1_700_000_000));
    assert!(issues.is_empty());

    // Garbage: an issue, no panic, no cpu.
    let s = proc_stat::parse("cpu x y\n", &mut issues);
    assert!(s.cpu.is_none());
    assert!(!issues.is_empty());
}

#[test]
fn meminfo_modern_and_before_memavailable() {
    let mut issues = Vec::new();
    let m = meminfo::parse(
        &text("misc/aws-graviton2-aarch64/proc/meminfo"),
        &mut issues,
    );
    assert!(m.total_kib.unwrap() > 0 && m.available_kib.is_some());
    assert!(issues.is_empty(), "{issues:?}");

    let m = meminfo::parse(
        &text("misc/meminfo-legacy-header/proc/meminfo"),
        &mut issues,
    );
    assert_eq!(
        (m.total_kib, m.available_kib),
        (Some(254_472), Some(210_156))
    );
    assert!(
        issues.is_empty(),
        "legacy header lines are not our fields: {issues:?}"
    );

    // The 32-bit board's kernel predates MemAvailable: estimated, and said so.
    let t = text("u8500-armv7-32bit-old/proc/meminfo");
    assert!(!t.contains("MemAvailable"));
    let m = meminfo::parse(&t, &mut issues);
    assert_eq!(m.total_kib, Some(280_840));
    assert!(m.available_kib.is_some());
    assert!(
        issues.iter().any(|i| i.what.contains("estimated")),
        "{issues:?}"
    );
}

#[test]
fn net_dev_including_glued_counters() {
    let mut issues = Vec::new();
    let n = net_dev::parse(&text("prometheus-procfs-x86_64/proc/net/dev"), &mut issues);
    let eth0 = n.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(
        (
            eth0.rx_bytes,
            eth0.rx_packets,
            eth0.tx_bytes,
            eth0.tx_packets
        ),
        (874_354_587, 1_036_395, 563_352_563, 732_147)
    );
    assert_eq!(n.len(), 4);
    assert!(issues.is_empty());
    let old = "h1\nh2\n  eth0:1234567890 5 0 0 0 0 0 0 42 6 0 0 0 0 0 0\n  bad: 1 2\n";
    let n = net_dev::parse(old, &mut issues);
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].rx_bytes, n[0].tx_bytes), (1_234_567_890, 42));
    assert_eq!(issues.len(), 1, "the short line is named: {issues:?}");
}

#[test]
fn diskstats_keep_whole_disks_only() {
    let mut issues = Vec::new();
    let d = diskstats::parse(&text("ubuntu1604-x86_64-4.4/proc/diskstats"), &mut issues);
    assert!(!d.is_empty());
    assert!(d.iter().all(|x| diskstats::is_whole_disk(&x.name)));
    assert!(issues.is_empty(), "{issues:?}");
    for yes in ["sda", "vda", "xvdb", "mmcblk0", "nvme0n1", "md0", "dm-3"] {
        assert!(diskstats::is_whole_disk(yes), "{yes}");
    }
    for no in [
        "sda1",
        "mmcblk0p2",
        "nvme0n1p1",
        "loop0",
        "ram3",
        "zram0",
        "mmcblk0boot0",
        "mmcblk0rpmb",
        "sr0",
    ] {
        assert!(!diskstats::is_whole_disk(no), "{no}");
    }
}

#[test]
fn pressure_loadavg_uptime() {
    let mut issues = Vec::new();
    let cpu = pressure::parse(
        "cpu",
        &text("misc/pressure-newer/proc/pressure/cpu"),
        &mut issues,
    )
    .unwrap();
    assert_eq!(cpu.some_us, 14_036_781);
    let old = pressure::parse(
        "cpu",
        &text("prometheus-procfs-x86_64/proc/pressure/cpu"),
        &mut issues,
    )
    .unwrap();
    assert_eq!((old.some_us, old.full_us), (15, None));
    assert!(issues.is_empty());
    assert_eq!(
        loadavg::parse(&text("ubuntu1604-x86_64-4.4/proc/loadavg"), &mut issues),
        Some([68, 50, 39])
    );
    assert_eq!(
        loadavg::parse("12.5 0.07 100.99 1/1 1", &mut issues),
        Some([1250, 7, 10099])
    );
    assert_eq!(loadavg::parse("nan", &mut issues), None);
    assert_eq!(issues.len(), 1);
}

#[test]
fn whole_fixture_trees_read_partially_with_issues() {
    for set in [
        "prometheus-procfs-x86_64",
        "ubuntu1604-x86_64-4.4",
        "kunpeng920-aarch64-5.15",
        "u8500-armv7-32bit-old",
        "nvidia-gb10-aarch64-6.17",
        "ubuntu1204-i686-xen-3.x",
    ] {
        let mut issues: Vec<Issue> = Vec::new();
        let r = reading::read(&fixture(set), 0, &mut issues);
        // Whatever a set lacks is an issue naming the file, not a panic.
        for (file, present) in [
            ("proc/stat", r.cpu.is_some()),
            ("proc/meminfo", r.memory.total_kib.is_some()),
            ("proc/loadavg", r.load_centi.is_some()),
        ] {
            let exists = fixture(set).join(file).exists();
            assert_eq!(present, exists, "{set}: {file}");
            if !exists {
                assert!(
                    issues.iter().any(|i| i.file.ends_with(file)),
                    "{set}: {file} missing but not reported"
                );
            }
        }
    }
    // prometheus' tree has pressure files for cpu, memory and io.
    let mut issues = Vec::new();
    let r = reading::read(&fixture("prometheus-procfs-x86_64"), 0, &mut issues);
    assert!(r.pressure.is_some());
    assert!(r.processes.unwrap() >= 4);
}

#[test]
fn differ_makes_interval_samples_and_survives_counter_resets() {
    let root = fixture("prometheus-procfs-x86_64");
    let mut issues = Vec::new();
    let a = reading::read(&root, 1_000, &mut issues);
    let mut b = a.clone();
    b.time_ms = 2_000;
    b.cpu.as_mut().unwrap().user += 50;
    let eth0 = b.network.iter_mut().find(|i| i.name == "eth0").unwrap();
    eth0.rx_bytes += 1500;
    let lo = b.network.iter_mut().find(|i| i.name == "lo").unwrap();
    lo.tx_bytes = 10; // went backwards: interface re-created
    let layout = Layout::of(&a);
    let mut d = Differ::default();
    assert!(
        d.next(a, 0, &layout).is_none(),
        "no interval before the second reading"
    );
    let s = d.next(b, 1000, &layout).unwrap();
    assert_eq!(s.cpu.user, 50);
    assert_eq!(s.cpu.idle, 0);
    let eth0_idx = layout.interfaces.iter().position(|n| n == "eth0").unwrap() as u8;
    let lo_idx = layout.interfaces.iter().position(|n| n == "lo").unwrap() as u8;
    assert_eq!(
        s.net.iter().find(|n| n.iface == eth0_idx).unwrap().rx_bytes,
        1500
    );
    assert_eq!(
        s.net.iter().find(|n| n.iface == lo_idx).unwrap().tx_bytes,
        10
    );
    assert_eq!(s.interval_ms, 1000);
}

#[test]
fn socket_tables_from_real_files() {
    use std::collections::HashMap;
    use vigil_agent::sample::sockets::{self, parse_row};
    use vigil_protocol::body::{Addr, Proto, SocketKind};
    let t = text("prometheus-procfs-x86_64/proc/net/tcp");
    let rows: Vec<_> = t
        .lines()
        .filter_map(parse_row)
        .map(|r| (Proto::Tcp, r))
        .collect();
    assert_eq!(rows.len(), t.lines().count() - 1, "every data line parses");
    let first = rows[0].1;
    assert_eq!(first.local.addr, Addr::V4([10, 0, 0, 5]));
    assert_eq!(first.local.port, 22);
    assert_eq!(first.state, 0x0a);
    let t6 = text("prometheus-procfs-x86_64/proc/net/tcp6");
    let rows6: Vec<_> = t6.lines().filter_map(parse_row).collect();
    assert_eq!(rows6[0].local.port, 0x14eb);
    assert!(matches!(rows6[1].local.addr, Addr::V6(b) if b[0] == 0xfe && b[1] == 0x80));
    // The old 32-bit Xen guest's tables parse too.
    for f in ["tcp", "tcp6", "udp", "udp6"] {
        let t = text(&format!("ubuntu1204-i686-xen-3.x/proc/3323/net/{f}"));
        let n = t.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        assert_eq!(t.lines().filter_map(parse_row).count(), n, "{f}");
    }
    let mut names = HashMap::new();
    names.insert(2740, "sshd".to_string());
    let entries = sockets::entries(&rows, &names);
    let snap = sockets::snapshot(&entries);
    assert!(snap
        .iter()
        .any(|c| c.kind == SocketKind::Listen && c.local.port == 22 && c.process == "sshd"));
    assert!(sockets::changes(&entries, &entries).is_empty());
    let mut fewer = entries.clone();
    let gone = fewer.pop_first().unwrap();
    let ch = sockets::changes(&entries, &fewer);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].local.port, gone.local.1);
}

#[test]
fn odd_process_names_keep_their_parentheses_and_spaces() {
    use vigil_agent::sample::sockets::comm_from_stat;
    let names: Vec<String> = ["4854", "68927", "884"]
        .iter()
        .map(|p| {
            comm_from_stat(&text(&format!("misc/odd-process-names/proc/{p}/stat")))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["(sd-pam)", "test(cmd).sh", "rs:main Q:Reg"]);
    assert_eq!(comm_from_stat("1 (a) b) S 0"), Some("a) b"));
    assert_eq!(comm_from_stat("garbage"), None);
}

#[test]
fn an_unanswered_connection_attempt_is_outbound_like_the_connection() {
    use std::collections::HashMap;
    use vigil_agent::sample::sockets::{entries, parse_row, snapshot};
    use vigil_protocol::body::{Proto, SocketKind};
    // SYN-SENT to 10.0.0.9:445 (state 02), then the same once established.
    let attempt = "   0: 0100000A:C350 0900000A:01BD 02 00000000:00000000 00:00000000 00000000  1000        0 102 1 0 100 0 0 10 0";
    let done = "   0: 0100000A:C350 0900000A:01BD 01 00000000:00000000 00:00000000 00000000  1000        0 102 1 0 100 0 0 10 0";
    let closing = "   0: 0100000A:C350 0900000A:01BD 06 00000000:00000000 00:00000000 00000000  1000        0 102 1 0 100 0 0 10 0";
    let names: HashMap<u64, String> = [(102, "smbclient".to_string())].into_iter().collect();
    let table = |l: &str| entries(&[(Proto::Tcp, parse_row(l).unwrap())], &names);
    let snap = snapshot(&table(attempt));
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].kind, SocketKind::Outbound);
    assert_eq!(
        (snap[0].remote.unwrap().port, snap[0].process.as_str()),
        (445, "smbclient")
    );
    assert_eq!(
        table(attempt),
        table(done),
        "the attempt and the connection are one entry"
    );
    assert!(table(closing).is_empty(), "TIME-WAIT is no connection");
}

#[test]
fn inbound_and_outbound_drop_ephemeral_ports() {
    use std::collections::HashMap;
    use vigil_agent::sample::sockets::{entries, parse_row, snapshot};
    use vigil_protocol::body::{Proto, SocketKind};
    // A listener on :443, a client connected to it, and an outbound connection to 10.0.0.9:445.
    let lines = [
        "   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0",
        "   1: 0100000A:01BB 0900000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 100 0 0 10 0",
        "   2: 0100000A:C350 0900000A:01BD 01 00000000:00000000 00:00000000 00000000  1000        0 102 1 0 100 0 0 10 0",
        "   3: 0100000A:C351 0900000A:01BD 01 00000000:00000000 00:00000000 00000000  1000        0 103 1 0 100 0 0 10 0",
    ];
    let rows: Vec<_> = lines
        .iter()
        .filter_map(|l| parse_row(l))
        .map(|r| (Proto::Tcp, r))
        .collect();
    assert_eq!(rows.len(), 4);
    let names: HashMap<u64, String> = [
        (100, "nginx"),
        (101, "nginx"),
        (102, "smbclient"),
        (103, "smbclient"),
    ]
    .into_iter()
    .map(|(i, n)| (i, n.to_string()))
    .collect();
    let snap = snapshot(&entries(&rows, &names));
    assert_eq!(
        snap.len(),
        3,
        "two connections to one endpoint are one entry: {snap:?}"
    );
    let inbound = snap.iter().find(|c| c.kind == SocketKind::Inbound).unwrap();
    assert_eq!((inbound.local.port, inbound.remote.unwrap().port), (443, 0));
    let outbound = snap
        .iter()
        .find(|c| c.kind == SocketKind::Outbound)
        .unwrap();
    assert_eq!(
        (
            outbound.local.port,
            outbound.remote.unwrap().port,
            outbound.process.as_str()
        ),
        (0, 445, "smbclient")
    );
}
