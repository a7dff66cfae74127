//! Shared fixtures for the protocol tests: fixed keys, reference samples
//! recorded on a real machine, and one example of every body.
#![allow(dead_code)]

use std::path::PathBuf;

use heapless::{String as HString, Vec as HVec};
use vigil_protocol::body::*;
use vigil_protocol::sample::{CpuTicks, DiskCounters, Memory, NetCounters, Pressure};
use vigil_protocol::{Body, DeviceId, Frame, Header, Sample, Samples, SigningKey, VERSION};

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// A fixed device key (deterministic signatures make golden bytes stable).
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn header(key: &SigningKey, boot: u32, seq: u64, time_ms: u64) -> Header {
    Header {
        version: VERSION,
        device: DeviceId::of(&key.verifying_key()),
        boot,
        seq,
        time_ms,
    }
}

pub fn hs<const N: usize>(s: &str) -> HString<N> {
    HString::try_from(s).expect("fixture string fits")
}

/// Samples recorded on this project's build machine (see the file header).
pub fn reference(name: &str) -> Vec<Sample> {
    let text = std::fs::read_to_string(testdata(name)).expect("reference file");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .map(|x| x.parse().expect("number"))
                .collect();
            assert_eq!(v.len(), 3 + 8 + 4 + 5 + 16 + 5 + 3 + 1, "columns in {name}");
            let net = |i: u8, o: usize| NetCounters {
                iface: i,
                rx_bytes: v[o],
                rx_packets: v[o + 1],
                rx_errors: v[o + 2],
                rx_dropped: v[o + 3],
                tx_bytes: v[o + 4],
                tx_packets: v[o + 5],
                tx_errors: v[o + 6],
                tx_dropped: v[o + 7],
            };
            Sample {
                time_ms: v[0],
                interval_ms: v[1],
                uptime_s: v[2],
                cpu: CpuTicks {
                    user: v[3],
                    nice: v[4],
                    system: v[5],
                    idle: v[6],
                    iowait: v[7],
                    irq: v[8],
                    softirq: v[9],
                    steal: v[10],
                },
                memory: Memory {
                    total_kib: v[11],
                    available_kib: v[12],
                    swap_total_kib: v[13],
                    swap_used_kib: v[14],
                },
                pressure: Some(Pressure {
                    cpu_some_ms: v[15] / 1000,
                    memory_some_ms: v[16] / 1000,
                    memory_full_ms: v[17] / 1000,
                    io_some_ms: v[18] / 1000,
                    io_full_ms: v[19] / 1000,
                }),
                net: HVec::from_slice(&[net(0, 20), net(1, 28)]).unwrap(),
                disk: HVec::from_slice(&[DiskCounters {
                    disk: 0,
                    reads: v[36],
                    read_sectors: v[37],
                    writes: v[38],
                    write_sectors: v[39],
                    io_ms: v[40],
                }])
                .unwrap(),
                load_centi: [v[41], v[42], v[43]],
                processes: v[44],
            }
        })
        .collect()
}

pub fn batch(samples: &[Sample]) -> Samples {
    let mut b = Samples::new(samples[0].clone());
    for s in &samples[1..] {
        b.push(s.clone()).expect("same shape");
    }
    b
}

pub fn hello() -> Hello {
    Hello {
        public_key: key(7).verifying_key().to_bytes(),
        agent_version: hs("0.1.0"),
        hostname: hs("ct-scanner-07"),
        kernel_release: hs("6.1.0-26-arm64"),
        os_release: hs("Debian GNU/Linux 12 (bookworm)"),
        arch: hs("aarch64"),
        kernel_boot_id: *b"\x8c\x1f\x02\x7a\x44\x10\x4b\x55\x9e\x33\x70\x01\xfa\x2b\x19\x6d",
        boot_time_s: 1_795_948_000,
        cpus: 4,
        interfaces: HVec::from_slice(&[
            Interface {
                name: hs("lo"),
                mac: None,
            },
            Interface {
                name: hs("eth0"),
                mac: Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            },
        ])
        .unwrap(),
        disks: HVec::from_slice(&[hs("mmcblk0")]).unwrap(),
        manifests: HVec::from_slice(&[ManifestVersion {
            class: Class::Firmware,
            issuer: hs("Acme Medical Imaging"),
            scope: hs("ct9000-firmware"),
            version: 42,
        }])
        .unwrap(),
    }
}

pub fn sockets() -> Sockets {
    Sockets {
        snapshot: false,
        changes: HVec::from_slice(&[
            SocketChange {
                change: Change::Added,
                kind: SocketKind::Listen,
                proto: Proto::Tcp,
                local: Endpoint {
                    addr: Addr::V6([0; 16]),
                    port: 23,
                },
                remote: None,
                uid: 0,
                process: hs("telnetd"),
            },
            SocketChange {
                change: Change::Added,
                kind: SocketKind::Outbound,
                proto: Proto::Tcp,
                local: Endpoint {
                    addr: Addr::V4([10, 20, 0, 7]),
                    port: 49152,
                },
                remote: Some(Endpoint {
                    addr: Addr::V4([10, 20, 1, 5]),
                    port: 445,
                }),
                uid: 1000,
                process: hs("smbclient"),
            },
        ])
        .unwrap(),
    }
}

pub fn integrity() -> Integrity {
    Integrity {
        manifest: hello().manifests[0].clone(),
        checked: 1234,
        continued: false,
        findings: HVec::from_slice(&[
            Finding {
                kind: FindingKind::Modified {
                    expected: [0x11; 32],
                    actual: [0x22; 32],
                },
                path: HVec::from_slice(b"/usr/bin/scanner").unwrap(),
            },
            Finding {
                kind: FindingKind::Metadata {
                    expected: FileMeta {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                    actual: FileMeta {
                        mode: 0o4755,
                        uid: 0,
                        gid: 0,
                    },
                },
                path: HVec::from_slice(b"/usr/bin/helper").unwrap(),
            },
            Finding {
                kind: FindingKind::Rollback {
                    accepted: 42,
                    offered: 41,
                },
                path: HVec::new(),
            },
        ])
        .unwrap(),
    }
}

pub fn posture() -> Posture {
    Posture {
        continued: false,
        results: HVec::from_slice(&[
            CheckResult {
                id: hs("ssh.password-auth"),
                title: hs("SSH password authentication is off"),
                status: CheckStatus::Fail,
                evidence: hs("sshd -T: passwordauthentication yes"),
            },
            CheckResult {
                id: hs("sysctl.randomize_va_space"),
                title: hs("Full ASLR"),
                status: CheckStatus::Pass,
                evidence: hs("kernel.randomize_va_space = 2"),
            },
        ])
        .unwrap(),
    }
}

pub fn gap() -> Gap {
    Gap {
        reason: GapReason::QueueFull,
        kind: BodyKind::Samples,
        samples: 100,
        ranges: HVec::from_slice(&[
            SeqRange {
                first: 10,
                count: 7,
            },
            SeqRange {
                first: 18,
                count: 3,
            },
        ])
        .unwrap(),
    }
}

pub fn heartbeat() -> Heartbeat {
    Heartbeat {
        uptime_s: 86_400,
        queued_frames: 3,
        queued_bytes: 512,
    }
}

/// A vendor's ssh login, the root shell started from it and closed, and a
/// rewritten login history: every kind of session event.
pub fn sessions() -> Sessions {
    fn hs<const N: usize>(t: &str) -> HString<N> {
        HString::try_from(t).unwrap()
    }
    let login = Session {
        key: 0x5eed_0000_0000_0001,
        kind: SessionKind::Remote,
        user: hs("vendor"),
        uid: Some(1001),
        terminal: hs("pts/0"),
        remote: Some(Endpoint {
            addr: Addr::V4([10, 78, 1, 5]),
            port: 50_514,
        }),
        process: hs("sshd"),
        pid: 4_242,
        command: hs(""),
        parent: None,
        by_user: hs(""),
        started_s: 1_795_948_700,
        source: SessionSource::Processes,
    };
    let root = Session {
        key: 0x5eed_0000_0000_0002,
        kind: SessionKind::Privileged,
        user: hs("root"),
        uid: Some(0),
        terminal: hs("pts/0"),
        remote: None,
        process: hs("sudo"),
        pid: 4_300,
        command: hs("bash"),
        parent: Some(login.key),
        by_user: hs("vendor"),
        started_s: 1_795_948_710,
        source: SessionSource::Processes,
    };
    let mut events = HVec::new();
    events.push(SessionEvent::Opened(login)).unwrap();
    events
        .push(SessionEvent::Closed {
            session: root,
            ended_s: 1_795_948_720,
        })
        .unwrap();
    events
        .push(SessionEvent::LogTampered(LogTamper {
            path: hs("/var/log/wtmp"),
            kind: TamperKind::Rewritten,
            expected_len: 3_840,
            actual_len: 3_840,
        }))
        .unwrap();
    Sessions {
        snapshot: false,
        continued: false,
        events,
    }
}

/// One example of every body, in wire-tag order, with its file stem.
pub fn every_body() -> Vec<(&'static str, Body)> {
    vec![
        ("hello", Body::Hello(hello())),
        (
            "samples",
            Body::Samples(batch(&reference("reference-busy.txt")[..10])),
        ),
        ("sockets", Body::Sockets(sockets())),
        ("integrity", Body::Integrity(integrity())),
        ("posture", Body::Posture(posture())),
        ("gap", Body::Gap(gap())),
        ("heartbeat", Body::Heartbeat(heartbeat())),
        ("sessions", Body::Sessions(sessions())),
        // Later additions to existing enums, each after the bodies.
        (
            "gap-elsewhere",
            Body::Gap(Gap {
                reason: GapReason::Elsewhere,
                kind: BodyKind::Hello,
                samples: 0,
                ranges: HVec::from_slice(&[SeqRange {
                    first: 1,
                    count: 41,
                }])
                .unwrap(),
            }),
        ),
        (
            "integrity-scope-changed",
            Body::Integrity(Integrity {
                manifest: hello().manifests[0].clone(),
                checked: 0,
                continued: false,
                findings: HVec::from_slice(&[Finding {
                    kind: FindingKind::ScopeChanged,
                    path: HVec::from_slice(b"/etc/vigil/firmware.manifest").unwrap(),
                }])
                .unwrap(),
            }),
        ),
    ]
}

pub const FRAME_TIME: u64 = 1_795_948_726_000;

pub fn signed(key: &SigningKey, seq: u64, body: Body) -> Vec<u8> {
    signed_at(key, seq, FRAME_TIME, body)
}

pub fn signed_at(key: &SigningKey, seq: u64, time_ms: u64, body: Body) -> Vec<u8> {
    let f = Frame::new(header(key, 3, seq, time_ms), body);
    f.sign(key).expect("encodes").to_vec()
}
