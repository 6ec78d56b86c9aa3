//! G-code checked before it reaches a printer, as it streams in: it must be text
//! (UTF-8, no NUL, lines of at most [`MAX_LINE`] bytes), and it must not heat the
//! nozzle or the bed beyond what the printer's model allows (a small profile table).
//! Every refusal names the line.

/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 4096;

/// What a printer model allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    pub model: &'static str,
    /// Highest nozzle temperature, °C.
    pub nozzle_max: f64,
    /// Highest bed temperature, °C.
    pub bed_max: f64,
    /// Highest build-chamber temperature, °C (a chamber heater, where there is one).
    pub chamber_max: f64,
}

/// Known models; any other gets [`DEFAULT_PROFILE`].
pub const PROFILES: &[Profile] = &[
    Profile {
        model: "Ultimaker S7",
        nozzle_max: 280.0,
        bed_max: 120.0,
        chamber_max: 60.0,
    },
    Profile {
        model: "Ultimaker S5",
        nozzle_max: 280.0,
        bed_max: 140.0,
        chamber_max: 60.0,
    },
    Profile {
        model: "Ultimaker S3",
        nozzle_max: 280.0,
        bed_max: 120.0,
        chamber_max: 60.0,
    },
    Profile {
        model: "Ultimaker 3",
        nozzle_max: 280.0,
        bed_max: 100.0,
        chamber_max: 60.0,
    },
    Profile {
        model: "Ultimaker 2+ Connect",
        nozzle_max: 260.0,
        bed_max: 100.0,
        chamber_max: 60.0,
    },
];

/// For models not in the table: what most desktop printers allow.
pub const DEFAULT_PROFILE: Profile = Profile {
    model: "unknown model",
    nozzle_max: 260.0,
    bed_max: 100.0,
    chamber_max: 60.0,
};

pub fn profile_for(model: Option<&str>) -> Profile {
    model
        .and_then(|m| {
            PROFILES
                .iter()
                .find(|p| p.model.eq_ignore_ascii_case(m.trim()))
        })
        .copied()
        .unwrap_or(DEFAULT_PROFILE)
}

/// Checks G-code fed in pieces of any size.
pub struct Checker {
    profile: Profile,
    line_no: u64,
    partial: Vec<u8>,
}

impl Checker {
    pub fn new(profile: Profile) -> Self {
        Self {
            profile,
            line_no: 0,
            partial: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            if self.partial.len() + end > MAX_LINE {
                self.line_no += 1;
                return Err(self.too_long());
            }
            self.partial.extend_from_slice(&data[..end]);
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line)?;
            data = &data[end + 1..];
        }
        if self.partial.len() + data.len() > MAX_LINE {
            self.line_no += 1;
            return Err(self.too_long());
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    /// The last line (without a final newline), and nothing left unchecked.
    pub fn finish(mut self) -> Result<(), String> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line)?;
        }
        Ok(())
    }

    fn too_long(&self) -> String {
        format!(
            "line {}: longer than {MAX_LINE} bytes; this is not G-code text",
            self.line_no
        )
    }

    fn check_line(&mut self, raw: &[u8]) -> Result<(), String> {
        self.line_no += 1;
        let n = self.line_no;
        if raw.contains(&0) {
            return Err(format!(
                "line {n}: contains a NUL byte; G-code must be text"
            ));
        }
        let line = std::str::from_utf8(raw)
            .map_err(|_| format!("line {n}: is not UTF-8 text; G-code must be text"))?;
        let code = strip_comments(line);
        let upper = code.trim().to_ascii_uppercase();
        // Klipper: SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300
        if let Some(rest) = upper.strip_prefix("SET_HEATER_TEMPERATURE") {
            let param = |name: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            };
            let what = match param("HEATER") {
                Some(h) if h.starts_with("HEATER_BED") => Some(("bed", self.profile.bed_max)),
                Some(h) if h.starts_with("EXTRUDER") => Some(("nozzle", self.profile.nozzle_max)),
                _ => None,
            };
            if let (Some((what, max)), Some(target)) = (what, param("TARGET")) {
                return self.check_temperature(
                    n,
                    "SET_HEATER_TEMPERATURE",
                    &format!("TARGET={target}"),
                    target,
                    what,
                    max,
                );
            }
            return Ok(());
        }
        // RS-274 words: a letter and a number, spaces optional and insignificant
        // ("M104S300" is "M104 S300"; "M0104" is M104).
        let words = words(&upper);
        let Some((letter, number)) = words.first() else {
            return Ok(());
        };
        if *letter != 'M' {
            return Ok(());
        }
        let Ok(code) = number.parse::<f64>() else {
            return Ok(());
        };
        let (what, max) = match code {
            c if c == 104.0 || c == 109.0 || c == 568.0 => ("nozzle", self.profile.nozzle_max),
            c if c == 140.0 || c == 190.0 => ("bed", self.profile.bed_max),
            _ => return Ok(()),
        };
        let command = format!("M{code}");
        for (letter, value) in &words[1..] {
            if matches!(letter, 'S' | 'R') {
                self.check_temperature(n, &command, &format!("{letter}{value}"), value, what, max)?;
            }
        }
        Ok(())
    }

    fn check_temperature(
        &self,
        n: u64,
        command: &str,
        word: &str,
        value: &str,
        what: &str,
        max: f64,
    ) -> Result<(), String> {
        let Ok(temp) = value.parse::<f64>() else {
            return Err(format!(
                "line {n}: {command} has a temperature that is not a number ({word})"
            ));
        };
        if !temp.is_finite() || temp > max {
            return Err(format!(
                "line {n}: {command} {word} sets the {what} to {temp} °C; the {} allows at most {max} °C",
                self.profile.model
            ));
        }
        Ok(())
    }
}

/// The line without its comments: `;` to the end, and `( … )`.
fn strip_comments(line: &str) -> String {
    let code = line.split(';').next().unwrap_or("");
    let mut out = String::with_capacity(code.len());
    let mut depth = 0u32;
    for c in code.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The words of an upper-cased line: (letter, its value), the value being what follows
/// the letter up to the next letter, without spaces; a leading `N…` line number and a
/// trailing `*…` checksum dropped.
fn words(line: &str) -> Vec<(char, String)> {
    let line = line.split('*').next().unwrap_or("");
    let mut out: Vec<(char, String)> = Vec::new();
    for c in line.chars() {
        if c.is_ascii_alphabetic() {
            out.push((c, String::new()));
        } else if !c.is_whitespace() {
            match out.last_mut() {
                Some((_, v)) => v.push(c),
                None => out.push(('?', c.to_string())),
            }
        }
    }
    if out.first().is_some_and(|(l, _)| *l == 'N') {
        out.remove(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(model: &str, text: &[u8], piece: usize) -> Result<(), String> {
        let mut c = Checker::new(profile_for(Some(model)));
        for p in text.chunks(piece.max(1)) {
            c.feed(p)?;
        }
        c.finish()
    }

    #[test]
    fn ordinary_gcode_passes_in_any_pieces() {
        let g = b";FLAVOR:Griffin\nM104 S210 ; heat\nM140 S60\nN12 M109 R215*57\nG1 X10 Y10 E1.5\n(comment)\nM190 S60";
        for piece in [1, 3, 1000] {
            assert_eq!(check("Ultimaker S5", g, piece), Ok(()));
        }
    }

    #[test]
    fn refusals_name_the_line() {
        let too_hot = b"G28\nM104 S300\n";
        assert_eq!(
            check("Ultimaker S5", too_hot, 4),
            Err("line 2: M104 S300 sets the nozzle to 300 °C; the Ultimaker S5 allows at most 280 °C".into())
        );
        let bed = b"G28\nG1 X1\nm190 s150\n";
        assert!(
            check("Ultimaker S5", bed, 100)
                .unwrap_err()
                .starts_with("line 3: M190 S150 sets the bed")
        );
        // The S5's bed may be 140 °C, an unknown model's not.
        assert!(check("Ultimaker S5", b"M140 S130\n", 100).is_ok());
        assert!(check("Acme 3000", b"M140 S130\n", 100).is_err());
        assert!(
            check("Ultimaker S5", b"G28\n\0\n", 100)
                .unwrap_err()
                .starts_with("line 2: contains a NUL")
        );
        assert!(
            check("Ultimaker S5", b"G28\nG1 \xff\xfe\n", 1)
                .unwrap_err()
                .starts_with("line 2: is not UTF-8")
        );
        let long = vec![b'G'; MAX_LINE + 1];
        assert!(
            check("Ultimaker S5", &long, 7)
                .unwrap_err()
                .starts_with("line 1: longer than")
        );
        assert!(
            check("Ultimaker S5", b"M104 Shot\n", 7)
                .unwrap_err()
                .contains("not a number")
        );
        assert!(check("Ultimaker S5", b"M104 Sinf\n", 7).is_err());
        assert!(check("Ultimaker S5", b"M104 SNaN\n", 7).is_err());
    }

    #[test]
    fn spelling_does_not_get_around_the_limits() {
        for hot in [
            &b"M104S300\n"[..],
            b"M 104 S 300\n",
            b"M0104 S300\n",
            b"m109 r300\n",
            b"N7 M104 S300*33\n",
            b"M568 P0 S300\n",
            b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300\n",
            b"set_heater_temperature heater=heater_bed target=160\n",
            b"M140 (bed) S160\n",
        ] {
            assert!(
                check("Ultimaker S5", hot, 5).is_err(),
                "{}",
                String::from_utf8_lossy(hot)
            );
        }
        // Odd but harmless lines do not trip the checker (nor panic it).
        for fine in [
            &b"M104 S200 *57\n"[..],
            b"M104 \xc3\xa9\n",
            b"M104\n",
            b"*\n",
            b"(just a comment)\n",
            b"G1 X-1.5e1\n",
            b"SET_HEATER_TEMPERATURE HEATER=chamber TARGET=300\n",
        ] {
            assert_eq!(
                check("Ultimaker S5", fine, 3),
                Ok(()),
                "{}",
                String::from_utf8_lossy(fine)
            );
        }
    }
}
