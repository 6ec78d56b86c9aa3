//! How fast the G-code checker reads a file, and the second reading beside it:
//!
//!     cargo run --release -p printworks-gcode --example throughput [MiB]
//!
//! Makes a slicer-like file (moves, extrusion, layer comments, fan and temperature
//! commands; 64 MiB by default), checks it five times fed in 64 KiB pieces as uploads
//! arrive, and prints the median rate. Numbers go to docs/benchmarks.md.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Instant;

use printworks_gcode::{Checker, profile_for, reference};

fn file(bytes: usize) -> Vec<u8> {
    let mut g = String::from(
        ";FLAVOR:Marlin\nM104 S215 ; set temperature\nM140 S60\nM190 S60\nM109 S215\nG28\nG92 E0\n",
    );
    let mut i = 0u64;
    while g.len() < bytes {
        if i.is_multiple_of(500) {
            g.push_str(&format!(
                ";LAYER:{}\nM106 S255\nG0 F7200 X{}.{} Y{}.5 Z{}.2\n",
                i / 500,
                i % 200,
                i % 10,
                (i * 3) % 200,
                i / 500
            ));
        }
        g.push_str(&format!(
            "G1 F1800 X{}.{:03} Y{}.{:03} E{}.{:05}\n",
            (i * 7) % 220,
            i % 1000,
            (i * 13) % 220,
            (i * 7) % 1000,
            i / 10,
            i % 100_000
        ));
        i += 1;
    }
    g.push_str("M104 S0\nM140 S0\n");
    g.into_bytes()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let data = file(mib * 1024 * 1024);
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
