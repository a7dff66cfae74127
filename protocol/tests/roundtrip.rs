//! Round-trip properties: every body, signed, framed, decoded and verified,
//! comes back equal; the packed sample codec is exact for any values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use heapless::{String as HString, Vec as HVec};
use proptest::prelude::*;
use vigil_protocol::body::*;
use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::sample::{CpuTicks, DiskCounters, Memory, NetCounters, Pressure, MAX_SAMPLES};
use vigil_protocol::{to_wire, Body, Frame, Sample, Samples, SignedFrame, MAX_FRAME_LEN};

fn hstr<const N: usize>() -> impl Strategy<Value = HString<N>> {
    proptest::collection::vec(any::<char>(), 0..N / 4).prop_map(|cs| {
        let mut s = HString::new();
        for c in cs {
            let _ = s.push(c);
        }
        s
    })
}

fn hvec<T: std::fmt::Debug, const N: usize>(
    el: impl Strategy<Value = T>,
) -> impl Strategy<Value = HVec<T, N>> {
    proptest::collection::vec(el, 0..=N).prop_map(|v| v.into_iter().collect())
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Addr::V4),
        any::<[u8; 16]>().prop_map(Addr::V6)
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (addr(), any::<u16>()).prop_map(|(addr, port)| Endpoint { addr, port })
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Firmware),
        Just(Class::Model),
        Just(Class::Config)
    ]
}

fn manifest_version() -> impl Strategy<Value = ManifestVersion> {
    (class(), hstr::<64>(), hstr::<64>(), any::<u64>()).prop_map(
        |(class, issuer, scope, version)| ManifestVersion {
            class,
            issuer,
            scope,
            version,
        },
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        (
            hstr::<24>(),
            hstr::<64>(),
            hstr::<64>(),
            hstr::<96>(),
            hstr::<16>(),
        ),
        (any::<[u8; 16]>(), any::<u64>(), any::<u16>()),
        hvec::<_, MAX_IFACES>(
            (hstr::<16>(), any::<Option<[u8; 6]>>())
                .prop_map(|(name, mac)| Interface { name, mac }),
        ),
        hvec::<_, MAX_DISKS>(hstr::<32>()),
        hvec::<_, MAX_MANIFESTS>(manifest_version()),
    )
        .prop_map(
            |((av, host, kr, os, arch), (kbid, bt, cpus), interfaces, disks, manifests)| Hello {
                public_key: [7; 32],
                agent_version: av,
                hostname: host,
                kernel_release: kr,
                os_release: os,
                arch,
                kernel_boot_id: kbid,
                boot_time_s: bt,
                cpus,
                interfaces,
                disks,
                manifests,
            },
        )
}

fn sample_shape() -> impl Strategy<Value = (bool, Vec<u8>, Vec<u8>)> {
    (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..=MAX_IFACES),
        proptest::collection::vec(any::<u8>(), 0..=MAX_DISKS),
    )
}

fn sample_of(shape: &(bool, Vec<u8>, Vec<u8>), v: &[u64]) -> Sample {
    let mut it = v.iter().copied().cycle();
    let mut n = || it.next().unwrap();
    Sample {
        time_ms: n(),
        interval_ms: n(),
        uptime_s: n(),
        cpu: CpuTicks {
            user: n(),
            nice: n(),
            system: n(),
            idle: n(),
            iowait: n(),
            irq: n(),
            softirq: n(),
            steal: n(),
        },
        memory: Memory {
            total_kib: n(),
            available_kib: n(),
            swap_total_kib: n(),
            swap_used_kib: n(),
        },
        pressure: shape.0.then(|| Pressure {
            cpu_some_ms: n(),
            memory_some_ms: n(),
            memory_full_ms: n(),
            io_some_ms: n(),
            io_full_ms: n(),
        }),
        net: shape
            .1
            .iter()
            .map(|&iface| NetCounters {
                iface,
                rx_bytes: n(),
                rx_packets: n(),
                rx_errors: n(),
                rx_dropped: n(),
                tx_bytes: n(),
                tx_packets: n(),
                tx_errors: n(),
                tx_dropped: n(),
            })
            .collect(),
        disk: shape
            .2
            .iter()
            .map(|&disk| DiskCounters {
                disk,
                reads: n(),
                read_sectors: n(),
                writes: n(),
                write_sectors: n(),
                io_ms: n(),
            })
            .collect(),
        load_centi: [n(), n(), n()],
        processes: n(),
    }
}

/// Values skewed towards what devices send (small), with the extremes mixed in.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..300, 2 => 0u64..2_000_000_000_000, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn samples() -> impl Strategy<Value = Samples> {
    (
        sample_shape(),
        proptest::collection::vec(proptest::collection::vec(value(), 1..140), 1..=MAX_SAMPLES),
    )
        .prop_map(|(shape, rows)| {
            let mut b = Samples::new(sample_of(&shape, &rows[0]));
            for r in &rows[1..] {
                b.push(sample_of(&shape, r)).unwrap();
            }
            b
        })
}

fn body() -> impl Strategy<Value = Body> {
    let change = prop_oneof![Just(Change::Added), Just(Change::Removed)];
    let kind = prop_oneof![
        Just(SocketKind::Listen),
        Just(SocketKind::Outbound),
        Just(SocketKind::Inbound)
    ];
    let proto = prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)];
    let socket = (
        change,
        kind,
        proto,
        endpoint(),
        proptest::option::of(endpoint()),
        any::<u32>(),
        hstr::<32>(),
    )
        .prop_map(
            |(change, kind, proto, local, remote, uid, process)| SocketChange {
                change,
                kind,
                proto,
                local,
                remote,
                uid,
                process,
            },
        );
    let meta = (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(mode, uid, gid)| FileMeta {
        mode,
        uid,
        gid,
    });
    let finding_kind = prop_oneof![
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(expected, actual)| FindingKind::Modified { expected, actual }),
        (meta.clone(), meta)
            .prop_map(|(expected, actual)| FindingKind::Metadata { expected, actual }),
        Just(FindingKind::Missing),
        Just(FindingKind::Unexpected),
        Just(FindingKind::TypeChanged),
        Just(FindingKind::Unreadable),
        Just(FindingKind::BadSignature),
        Just(FindingKind::UntrustedKey),
        (any::<u64>(), any::<u64>())
            .prop_map(|(accepted, offered)| FindingKind::Rollback { accepted, offered }),
    ];
    let finding = (finding_kind, hvec::<u8, 48>(any::<u8>())).prop_map(|(kind, p)| Finding {
        kind,
        path: p.into_iter().collect(),
    });
    let status = prop_oneof![
        Just(CheckStatus::Pass),
        Just(CheckStatus::Fail),
        Just(CheckStatus::NotApplicable),
        Just(CheckStatus::Error)
    ];
    let check = (hstr::<32>(), hstr::<64>(), status, hstr::<160>()).prop_map(
        |(id, title, status, evidence)| CheckResult {
            id,
            title,
            status,
            evidence,
        },
    );
    let body_kind = prop_oneof![
        Just(BodyKind::Samples),
        Just(BodyKind::Heartbeat),
        Just(BodyKind::Sockets)
    ];
    let gap_reason = prop_oneof![Just(GapReason::QueueFull), Just(GapReason::Unencodable)];
    let range = (any::<u64>(), any::<u64>()).prop_map(|(first, count)| SeqRange { first, count });
    let session_kind = prop_oneof![
        Just(SessionKind::Remote),
        Just(SessionKind::Console),
        Just(SessionKind::Privileged)
    ];
    let source = prop_oneof![
        Just(SessionSource::Processes),
        Just(SessionSource::Utmp),
        Just(SessionSource::Wtmp)
    ];
    let session = (
        (
            any::<u64>(),
            session_kind,
            hstr::<32>(),
            any::<Option<u32>>(),
            hstr::<32>(),
        ),
        (
            proptest::option::of(endpoint()),
            hstr::<32>(),
            any::<u32>(),
            hstr::<32>(),
        ),
        (any::<Option<u64>>(), hstr::<32>(), any::<u64>(), source),
    )
        .prop_map(
            |(
                (key, kind, user, uid, terminal),
                (remote, process, pid, command),
                (parent, by_user, started_s, source),
            )| Session {
                key,
                kind,
                user,
                uid,
                terminal,
                remote,
                process,
                pid,
                command,
                parent,
                by_user,
                started_s,
                source,
            },
        )
        .boxed();
    let tamper = prop_oneof![
        Just(TamperKind::Truncated),
        Just(TamperKind::Rewritten),
        Just(TamperKind::Replaced)
    ];
    let event = prop_oneof![
        session.clone().prop_map(SessionEvent::Opened),
        (session, any::<u64>())
            .prop_map(|(session, ended_s)| SessionEvent::Closed { session, ended_s }),
        (hstr::<64>(), tamper, any::<u64>(), any::<u64>()).prop_map(
            |(path, kind, expected_len, actual_len)| {
                SessionEvent::LogTampered(LogTamper {
                    path,
                    kind,
                    expected_len,
                    actual_len,
                })
            }
        ),
    ];
    prop_oneof![
        hello().prop_map(Body::Hello),
        samples().prop_map(Body::Samples),
        (any::<bool>(), hvec::<_, 12>(socket)).prop_map(|(snapshot, c)| Body::Sockets(Sockets {
            snapshot,
            changes: c.into_iter().collect()
        })),
        (
            manifest_version(),
            any::<u32>(),
            any::<bool>(),
            hvec::<_, 8>(finding)
        )
            .prop_map(
                |(manifest, checked, continued, f)| Body::Integrity(Integrity {
                    manifest,
                    checked,
                    continued,
                    findings: f.into_iter().collect()
                })
            ),
        (any::<bool>(), hvec::<_, 8>(check)).prop_map(|(continued, r)| Body::Posture(Posture {
            continued,
            results: r.into_iter().collect()
        })),
        (
            gap_reason,
            body_kind,
            any::<u64>(),
            hvec::<_, MAX_GAP_RANGES>(range)
        )
            .prop_map(|(reason, kind, samples, ranges)| {
                Body::Gap(Gap {
                    reason,
                    kind,
                    samples,
                    ranges,
                })
            }),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(uptime_s, queued_frames, queued_bytes)| Body::Heartbeat(Heartbeat {
                uptime_s,
                queued_frames,
                queued_bytes
            })
        ),
        (
            any::<bool>(),
            any::<bool>(),
            hvec::<_, MAX_SESSION_EVENTS>(event)
        )
            .prop_map(|(snapshot, continued, events)| Body::Sessions(Sessions {
                snapshot,
                continued,
                events
            })),
    ]
}

/// The largest `Sessions` body the agent can build (every string full of
/// 4-byte characters counts as its byte capacity, every number at its
/// widest) still fits one frame: a session event is never unencodable.
#[test]
fn a_full_sessions_frame_fits() {
    fn full<const N: usize>() -> HString<N> {
        let mut s = HString::new();
        while s.push('\u{10ffff}').is_ok() {}
        while s.push('x').is_ok() {}
        s
    }
    let session = Session {
        key: u64::MAX,
        kind: SessionKind::Privileged,
        user: full(),
        uid: Some(u32::MAX),
        terminal: full(),
        remote: Some(Endpoint {
            addr: Addr::V6([0xff; 16]),
            port: u16::MAX,
        }),
        process: full(),
        pid: u32::MAX,
        command: full(),
        parent: Some(u64::MAX),
        by_user: full(),
        started_s: u64::MAX,
        source: SessionSource::Wtmp,
    };
    let mut events = HVec::new();
    while events
        .push(SessionEvent::Closed {
            session: session.clone(),
            ended_s: u64::MAX,
        })
        .is_ok()
    {}
    let k = key(7);
    let frame = Frame::new(
        header(&k, u32::MAX, u64::MAX, u64::MAX),
        Body::Sessions(Sessions {
            snapshot: true,
            continued: true,
            events,
        }),
    );
    let bytes = frame.sign(&k).expect("a full Sessions frame must encode");
    assert!(bytes.len() <= MAX_FRAME_LEN, "{} bytes", bytes.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_body_survives_sign_frame_decode_verify(
        body in body(), boot in any::<u32>(), seq in any::<u64>(), time in any::<u64>(), seed in any::<u8>()
    ) {
        let k = key(seed);
        let frame = Frame::new(header(&k, boot, seq, time), body.clone());
        let bytes = match frame.sign(&k) {
            Ok(b) => b,
            // Random bodies can exceed the frame limit; that must be the only failure.
            Err(e) => { prop_assert_eq!(e, vigil_protocol::EncodeError::TooLarge); return Ok(()); }
        };
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let wire = to_wire(&bytes).unwrap();
        let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
        let mut input: &[u8] = &wire;
        let got = dec.feed(&mut input).unwrap().unwrap().to_vec();
        prop_assert!(input.is_empty());
        prop_assert_eq!(&got[..], &bytes[..]);
        let verified = SignedFrame::parse(&got).unwrap().verify(&k.verifying_key()).unwrap();
        prop_assert_eq!(verified.header(), &frame.header);
        prop_assert_eq!(verified.kind(), Some(body.kind()));
        prop_assert_eq!(verified.body().unwrap(), body);
    }

    #[test]
    fn acks_round_trip(boot in any::<u32>(), seq in any::<u64>(), seed in any::<u8>()) {
        let ack = vigil_protocol::Ack { device: vigil_protocol::DeviceId::of(&key(seed).verifying_key()), boot, seq };
        prop_assert_eq!(vigil_protocol::Ack::decode(&ack.encode()), Ok(ack));
    }
}
