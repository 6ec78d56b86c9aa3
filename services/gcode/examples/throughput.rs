//! How fast the G-code checker reads a file, and the second reading beside it:
//!
//!     cargo run --release -p printworks-gcode --example throughput [MiB]
//!
//! Makes a slicer-like file (moves, extrusion, layer comments, fan and temperature
//! commands; 64 MiB by default), checks it five times fed in 64 KiB pieces as uploads
//! arrive, and prints the median rate. Numbers go to docs/benchmarks.md.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Instant;

use printworks_gcode::sample::sample;
use printworks_gcode::{Checker, profile_for, reference};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let data = sample(mib * 1024 * 1024);
    let profile = profile_for(Some("Ultimaker S5"));
    let mb = data.len() as f64 / (1024.0 * 1024.0);
    let mut streaming = Vec::new();
    let mut second = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut c = Checker::new(profile);
        for piece in data.chunks(64 * 1024) {
            c.feed(piece).unwrap();
        }
        c.finish().unwrap();
        streaming.push(mb / t.elapsed().as_secs_f64());
        let t = Instant::now();
        assert_eq!(
            reference::verdict(profile, &data),
            reference::Verdict::Accepted
        );
        second.push(mb / t.elapsed().as_secs_f64());
    }
    println!(
        "{mb:.0} MiB of G-code, {} lines: checker {:.0} MiB/s, second reading {:.0} MiB/s (medians of 5)",
        data.iter().filter(|&&b| b == b'\n').count(),
        median(streaming),
        median(second)
    );
}
