//! The G-code checker against the second reading of its rules
//! (`printworks_gcode::reference`): for any bytes, fed in pieces of any size, both give
//! the same verdict — accepted, refused at the same line, or refused for holding no
//! command — and the checker never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use printworks_gcode::reference::{Verdict, verdict};
use printworks_gcode::{Checker, PROFILES};

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the printer model and the size of the pieces.
    let (choice, text) = match data {
        [a, b, rest @ ..] => ((*a as usize, *b as usize), rest),
        _ => return,
    };
    let profile = PROFILES[choice.0 % PROFILES.len()];
    let piece = choice.1 % 64 + 1;
    let mut checker = Checker::new(profile);
    let got = text
        .chunks(piece)
        .try_for_each(|p| checker.feed(p))
        .and_then(|()| checker.finish());
    let expected = verdict(profile, text);
    let same = match (&got, expected) {
        (Ok(()), Verdict::Accepted) => true,
        (Err(m), Verdict::RefusedAt(line)) => m.starts_with(&format!("line {line}:")),
        (Err(m), Verdict::NoCommand) => m.starts_with("the file holds no"),
        _ => false,
    };
    assert!(same, "checker {got:?}, reference {expected:?}");
});
