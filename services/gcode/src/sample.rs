//! A slicer-like G-code file of a given size, which the checker accepts: what the
//! throughput example and `make bench` (the upload and streaming rows) feed it.

/// A slicer-like G-code file of exactly `bytes` bytes (moves with extrusion, layer
/// comments, fan and temperature commands), which the checker accepts.
pub fn sample(bytes: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut g = String::with_capacity(bytes + 64);
    g.push_str(";FLAVOR:Marlin\nM104 S215\nM140 S60\nM190 S60\nM109 S215\nG28\nG92 E0\n");
    let tail = "M104 S0\nM140 S0\n";
    let mut i = 0u64;
    while g.len() + 64 + tail.len() < bytes {
        if i.is_multiple_of(500) {
            let _ = writeln!(
                g,
                ";LAYER:{}\nM106 S255\nG0 F7200 X{}.{} Y{}.5 Z{}.2",
                i / 500,
                i % 200,
                i % 10,
                (i * 3) % 200,
                i / 500 % 200
            );
        }
        let _ = writeln!(
            g,
            "G1 F1800 X{}.{:03} Y{}.{:03} E{}.{:05}",
            (i * 7) % 220,
            i % 1000,
            (i * 13) % 220,
            (i * 7) % 1000,
            i / 10,
            i % 100_000
        );
        i += 1;
    }
    g.push(';');
    while g.len() + 1 + tail.len() < bytes {
        g.push('-');
    }
    g.push('\n');
    g.push_str(tail);
    g.into_bytes()
}
