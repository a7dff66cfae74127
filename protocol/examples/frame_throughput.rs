//! The agent's and collector's per-frame work, timed: pack ten recorded
//! samples, sign, COBS-encode (agent) and COBS-decode, verify, decode
//! (collector). Used to choose the release profile's opt-level (README,
//! "Release profile"). Run: `cargo run --release -p vigil-protocol --example frame_throughput`.

#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::time::Instant;

use vigil_protocol::cobs::FrameDecoder;
use vigil_protocol::sample::{CpuTicks, DiskCounters, Memory, NetCounters};
use vigil_protocol::{
    to_wire, Body, DeviceId, Frame, Header, Sample, Samples, SignedFrame, SigningKey, MAX_FRAME_LEN,
};

fn sample(i: u64) -> Sample {
    let net = |iface, b| NetCounters {
        iface,
        rx_bytes: b,
        rx_packets: b / 900,
        tx_bytes: b / 3,
        tx_packets: b / 2000,
        ..Default::default()
    };
    Sample {
        time_ms: 1_795_948_700_000 + i * 1000,
        interval_ms: 1000 + i % 3,
        uptime_s: 600 + i,
        cpu: CpuTicks {
            user: 100 + i % 5,
            system: 6,
            idle: 90 - i % 5,
            iowait: i % 2,
            softirq: 1,
            ..Default::default()
        },
        memory: Memory {
            total_kib: 24_683_656,
            available_kib: 24_356_176 + i * 48,
            swap_total_kib: 0,
            swap_used_kib: 0,
        },
        pressure: None,
        net: [net(0, 9_017_344 + i * 208), net(1, 1200 + i)]
            .into_iter()
            .collect(),
        disk: [DiskCounters {
            disk: 0,
            writes: 6,
            write_sectors: 4112,
            io_ms: 8 + i % 4,
            ..Default::default()
        }]
        .into_iter()
        .collect(),
        load_centi: [66, 24, 9],
        processes: 74,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let device = DeviceId::of(&vk);
    let mut batch = Samples::new(sample(0));
    for i in 1..10 {
        let _ = batch.push(sample(i));
    }
    let body = Body::Samples(batch);

    let t = Instant::now();
    let mut wires = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let h = Header {
            version: 1,
            device,
            boot: 1,
            seq,
            time_ms: 1_795_948_710_000,
        };
        let bytes = Frame::new(h, body.clone()).sign(&key).expect("fits");
        wires.push(to_wire(&bytes).expect("fits").to_vec());
    }
    let encode = t.elapsed();

    let t = Instant::now();
    let mut dec = FrameDecoder::<MAX_FRAME_LEN>::new();
    let mut ok = 0u64;
    for w in &wires {
        let mut input: &[u8] = w;
        while let Some(Ok(frame)) = dec.feed(&mut input) {
            let v = SignedFrame::parse(frame).and_then(|f| {
                f.verify(&vk)
                    .map_err(|_| vigil_protocol::DecodeError::Malformed)
            });
            if v.and_then(|v| v.body()).is_ok() {
                ok += 1;
            }
        }
    }
    let decode = t.elapsed();
    assert_eq!(ok, n);
    println!(
        "frames={n} bytes/frame={} sign+encode={:.0}/s decode+verify={:.0}/s",
        wires[0].len(),
        n as f64 / encode.as_secs_f64(),
        n as f64 / decode.as_secs_f64()
    );
}
