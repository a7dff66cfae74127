//! Measured frame sizes against the budgets in SPEC.md ("Measured sizes"),
//! on samples recorded on a real machine. Sizes are deterministic for these
//! inputs, so this is a budget check, not a timing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use vigil_protocol::{to_wire, Body};

fn wire_len(samples: &[vigil_protocol::Sample]) -> usize {
    let k = key(7);
    let now = samples.last().unwrap().time_ms + 3;
    let frame = signed_at(&k, 1234, now, Body::Samples(batch(samples)));
    to_wire(&frame).expect("fits").len()
}

#[test]
fn one_sample_frame_fits_160_bytes() {
    for file in ["reference-idle.txt", "reference-busy.txt"] {
        let s = reference(file);
        let worst = s
            .iter()
            .map(|x| wire_len(std::slice::from_ref(x)))
            .max()
            .unwrap();
        let first = wire_len(&s[..1]);
        println!("{file}: one-sample frame {first} B on the wire (worst of 11: {worst} B)");
        assert!(worst <= 160, "{file}: {worst} B > 160");
    }
}

#[test]
fn ten_sample_frame_fits_40_bytes_per_sample() {
    for file in ["reference-idle.txt", "reference-busy.txt"] {
        let s = reference(file);
        for start in 0..2 {
            let n = wire_len(&s[start..start + 10]);
            println!(
                "{file}: ten-sample frame {n} B on the wire = {:.1} B/sample",
                n as f64 / 10.0
            );
            assert!(n <= 400, "{file}: {n} B for 10 samples");
        }
    }
}
