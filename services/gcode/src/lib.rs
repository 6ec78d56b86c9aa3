//! What Printworks accepts as G-code, and the checker that reads a file the way the
//! firmware of a printer would, before any printer gets it.
//!
//! The cloud does not know which firmware a printer runs, and Marlin, Klipper and
//! RepRapFirmware read the same line differently (docs/security.md has the cases: a
//! lone carriage return ends a line for one and not another, `(` starts a comment for
//! one and is data for another, `S3e2` is 300 for one and 3 for another, a second `M`
//! on a line starts a second command for RepRapFirmware only, …). So the checker does
//! not pick one reading: it accepts one conservative dialect that all three read alike,
//! refuses whatever they could read differently, and checks every heating command of
//! all three against the printer model's limits. Every refusal names the line.
//!
//! # The dialect
//!
//! A file is lines ending in LF (a CR right before the LF belongs to the line end; the
//! last line may have none). It must hold at least one command. Each line:
//!
//! 1. is at most [`MAX_LINE`] bytes, valid UTF-8, with no CR, NUL, DEL or other control
//!    character; a TAB only in a comment;
//! 2. splits at its first `;` into code and comment; the code is printable ASCII
//!    without `\` `(` `)` `{` `}` `#` `'`, with an even number of `"`;
//! 3. may start (after spaces) with a line number `N<digits>` and a space, and then only
//!    may end with a checksum `*<digits>`; no other `*`;
//! 4. holds no RepRapFirmware meta command (`if`, `elif`, `else`, `while`, `break`,
//!    `continue`, `abort`, `var`, `global`, `set`, `echo`, `skip`);
//! 5. starts a command wherever a `G` or `M` (either case) outside quotes is followed by
//!    a digit (RepRapFirmware runs each); the line's first word is its first command:
//!    a letter and its number (`M104`, `G1`, `T0`; a space between them is refused), or
//!    a Klipper command `NAME KEY=VALUE …`;
//! 6. holds no command that raises limits, reconfigures heaters, runs other files or
//!    macros, or changes units ([`forbidden`]);
//! 7. holds a heating command ([`heating`]) only alone on its line and written plainly:
//!    words `<letter><number>` separated by spaces, each letter once, only the letters
//!    that command takes, temperatures as plain non-negative decimals
//!    (`[0-9]+(.[0-9]+)?`, colon lists for tool temperatures) within the model's limits;
//! 8. as a Klipper command, has `KEY=VALUE` words only, each key once, no quotes; the
//!    heating ones (`SET_HEATER_TEMPERATURE`, `PID_CALIBRATE`, `MPC_CALIBRATE`) are
//!    checked like the others, the forbidden ones refused, and in any other (a macro,
//!    whose body the cloud cannot see) every numeric value of a key that names a
//!    temperature, a bed, an extruder, a nozzle, a hotend, a chamber or heat is checked
//!    as a temperature of that heater.
//!
//! [`reference`] reads the same rules a second time, written apart and line by line;
//! the fuzz target (`fuzz/`) holds the two against each other.

pub mod reference;
pub mod sample;

/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 4096;
/// The most commands one line may start (RepRapFirmware's reading).
pub const MAX_COMMANDS: usize = 16;
/// The highest `G` or `M` number accepted.
pub const MAX_COMMAND_NUMBER: u32 = 9999;

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

/// A heater whose temperature a word sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heater {
    Nozzle,
    Bed,
    Chamber,
}

impl Heater {
    pub fn name(self) -> &'static str {
        match self {
            Heater::Nozzle => "nozzle",
            Heater::Bed => "bed",
            Heater::Chamber => "chamber",
        }
    }

    pub fn limit(self, p: &Profile) -> f64 {
        match self {
            Heater::Nozzle => p.nozzle_max,
            Heater::Bed => p.bed_max,
            Heater::Chamber => p.chamber_max,
        }
    }
}

/// How a heating command is written: which letters carry a temperature (and of which
/// heater), which other letters it may take, and whether temperatures may be colon
/// lists (one per tool heater).
#[derive(Clone, Copy, Debug)]
pub struct Heating {
    pub temperatures: &'static [(u8, Heater)],
    pub others: &'static [u8],
    pub lists: bool,
    /// The command heats only when one of its temperature letters appears anywhere in
    /// it (`G10` is otherwise a retraction or an offset, `G26` a plain test print).
    pub optional: bool,
}

impl Heating {
    /// Whether `rest` (what follows the command) is heating: always, unless the command
    /// is [`Heating::optional`] and none of its temperature letters appears in it.
    pub fn applies(&self, rest: &[u8]) -> bool {
        !self.optional
            || rest.iter().any(|b| {
                self.temperatures
                    .iter()
                    .any(|(l, _)| *l == b.to_ascii_uppercase())
            })
    }
}

/// The heating commands of Marlin, Klipper and RepRapFirmware, by letter and number:
/// `M104`/`M109` nozzle (`S`, `R`, Marlin's autotemp maximum `B`), `M140`/`M190` bed,
/// `M141`/`M191` chamber, `M568` and `G10` tool temperatures (RepRapFirmware; `G10`
/// without temperatures is a retraction or an offset and stays plain), `M303` autotune
/// (`E-1` is the bed), `G26` mesh validation (`B` bed, `H` nozzle).
pub fn heating(letter: u8, number: u32) -> Option<Heating> {
    const NOZZLE_SRB: &[(u8, Heater)] = &[
        (b'S', Heater::Nozzle),
        (b'R', Heater::Nozzle),
        (b'B', Heater::Nozzle),
    ];
    const BED_SR: &[(u8, Heater)] = &[(b'S', Heater::Bed), (b'R', Heater::Bed)];
    const CHAMBER_SR: &[(u8, Heater)] = &[(b'S', Heater::Chamber), (b'R', Heater::Chamber)];
    const TOOL_SR: &[(u8, Heater)] = &[(b'S', Heater::Nozzle), (b'R', Heater::Nozzle)];
    let h = |temperatures, others, lists, optional| {
        Some(Heating {
            temperatures,
            others,
            lists,
            optional,
        })
    };
    match (letter.to_ascii_uppercase(), number) {
        (b'M', 104 | 109) => h(NOZZLE_SRB, b"TF", false, false),
        (b'M', 140 | 190) => h(BED_SR, b"P", false, false),
        (b'M', 141 | 191) => h(CHAMBER_SR, b"P", false, false),
        (b'M', 568) => h(TOOL_SR, b"PA", true, false),
        (b'G', 10) => h(TOOL_SR, b"P", true, true),
        (b'M', 303) => h(&[(b'S', Heater::Nozzle)], b"ECU", false, false),
        (b'G', 26) => h(
            &[(b'B', Heater::Bed), (b'H', Heater::Nozzle)],
            b"CDFKLOPQRSUXYZ",
            false,
            true,
        ),
        _ => None,
    }
}

/// Commands refused wherever they appear, and why: they raise the firmware's own limits,
/// reconfigure or retune heaters, change temperature units or stored settings, write
/// or print other files, run macros, or drive pins — none of which the cloud can check.
pub fn forbidden(letter: u8, number: u32) -> Option<&'static str> {
    if !letter.eq_ignore_ascii_case(&b'M') {
        return None;
    }
    Some(match number {
        143 => "raises the heaters' temperature limit",
        570 => "changes heater fault detection",
        301 | 304 | 306 | 307 | 309 => "retunes a heater",
        305 | 308 | 950 | 563 | 144 => "reconfigures heaters or their sensors",
        145 => "changes material preset temperatures",
        149 => "changes the temperature units",
        500..=502 => "changes the printer's stored settings",
        23 | 24 | 28 | 29 | 32 | 33 => "prints or writes another file",
        98 | 99 | 810..=819 => "runs a macro",
        701 | 702 => "runs a filament macro",
        42 => "drives a pin",
        _ => return None,
    })
}

/// Klipper commands refused: they print another file, change macro variables or pins,
/// run a tuning tower (temperatures computed from the height) or rewrite the printer's
/// configuration.
pub const FORBIDDEN_KLIPPER: &[&str] = &[
    "SDCARD_PRINT_FILE",
    "TUNING_TOWER",
    "SET_GCODE_VARIABLE",
    "SET_PIN",
    "SAVE_CONFIG",
    "SET_HEATER_PID",
];

/// Klipper commands that heat, checked: `HEATER` names the heater (`extruder…`:
/// nozzle, `heater_bed`: bed, any other: a chamber-like heater), `TARGET` the
/// temperature.
pub const HEATING_KLIPPER: &[&str] = &["SET_HEATER_TEMPERATURE", "PID_CALIBRATE", "MPC_CALIBRATE"];

/// RepRapFirmware's meta commands.
pub const META: &[&str] = &[
    "if", "elif", "else", "while", "break", "continue", "abort", "var", "global", "set", "echo",
    "skip",
];

/// The heater a Klipper heater name is.
pub fn klipper_heater(name: &str) -> Heater {
    let name = name.to_ascii_lowercase();
    if name.starts_with("extruder") {
        Heater::Nozzle
    } else if name == "heater_bed" {
        Heater::Bed
    } else {
        Heater::Chamber
    }
}

/// The heater a macro parameter seems to set, by its key: `None` for one that names no
/// heater.
pub fn macro_heater(key: &str) -> Option<Heater> {
    let key = key.to_ascii_uppercase();
    if key.contains("BED") {
        Some(Heater::Bed)
    } else if key.contains("CHAMBER") {
        Some(Heater::Chamber)
    } else if ["TEMP", "EXTRUDER", "HOTEND", "NOZZLE", "HEAT"]
        .iter()
        .any(|w| key.contains(w))
    {
        Some(Heater::Nozzle)
    } else {
        None
    }
}

/// A plain temperature: `[0-9]+(.[0-9]+)?`, at most 10 characters.
pub fn plain_number(s: &[u8]) -> Option<f64> {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => (&s[..dot], Some(&s[dot + 1..])),
        None => (s, None),
    };
    let digits = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    if s.len() > 10 || !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Checks G-code fed in pieces of any size, as it streams.
pub struct Checker {
    profile: Profile,
    line_no: u64,
    partial: Vec<u8>,
    commands: u64,
}

/// What a piece of a line is, as its first word says.
enum Word<'a> {
    /// A letter and its number (`M104`, `G1`, `T0`, `X10`).
    Classic {
        letter: u8,
        number: u32,
        subcode: bool,
        rest: &'a [u8],
    },
    /// A Klipper command: `NAME KEY=VALUE …`.
    Klipper { name: &'a str },
    /// Anything else (an unknown word, a lone letter).
    Other,
}

impl Checker {
    pub fn new(profile: Profile) -> Self {
        Self {
            profile,
            line_no: 0,
            partial: Vec::new(),
            commands: 0,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            if self.partial.len() + end > MAX_LINE + 1 {
                self.line_no += 1;
                return Err(self.too_long());
            }
            let line = if self.partial.is_empty() {
                self.check_line(&data[..end])
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&data[..end]);
                let r = self.check_line(&line);
                // Keep the allocation for the next partial line.
                line.clear();
                self.partial = line;
                r
            };
            line?;
            data = &data[end + 1..];
        }
        if self.partial.len() + data.len() > MAX_LINE + 1 {
            self.line_no += 1;
            return Err(self.too_long());
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    /// The last line (without a final newline), and the file as a whole: it must hold
    /// at least one command.
    pub fn finish(mut self) -> Result<(), String> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line)?;
        }
        if self.commands == 0 {
            return Err("the file holds no G-code command (it is empty, or only comments)".into());
        }
        Ok(())
    }

    fn too_long(&self) -> String {
        format!(
            "line {}: longer than {MAX_LINE} bytes; this is not G-code text",
            self.line_no
        )
    }

    /// One line, without its LF (a CR before it is part of the line end).
    fn check_line(&mut self, raw: &[u8]) -> Result<(), String> {
        self.line_no += 1;
        let n = self.line_no;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() > MAX_LINE {
            return Err(self.too_long());
        }
        let refuse = |why: &str| Err(format!("line {n}: {why}"));
        let (code, comment) = match raw.iter().position(|&b| b == b';') {
            Some(i) => (&raw[..i], &raw[i + 1..]),
            None => (raw, &raw[raw.len()..]),
        };
        for &b in comment {
            match b {
                b'\r' => return refuse(LONE_CR),
                0 => return refuse(NUL),
                b'\t' => {}
                0x01..=0x1f | 0x7f => return refuse(CONTROL),
                _ => {}
            }
        }
        if std::str::from_utf8(comment).is_err() {
            return refuse(NOT_UTF8);
        }
        let mut quotes = 0;
        for &b in code {
            match b {
                b'\r' => return refuse(LONE_CR),
                0 => return refuse(NUL),
                0x01..=0x1f | 0x7f => return refuse(CONTROL),
                0x80.. => return refuse(NOT_ASCII),
                b'\\' | b'(' | b')' | b'{' | b'}' | b'#' | b'\'' => {
                    return refuse(&format!(
                        "`{}` in a command: firmware read it differently",
                        char::from(b)
                    ));
                }
                b'"' => quotes += 1,
                _ => {}
            }
        }
        if quotes % 2 == 1 {
            return refuse(UNBALANCED_QUOTES);
        }
        let mut text = trim_spaces(code);
        // A line number, then perhaps a checksum at the end.
        let numbered = matches!(text.first(), Some(b'N' | b'n'));
        if numbered {
            let digits = text[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            let after = &text[1 + digits..];
            if digits == 0 || !(after.is_empty() || after[0] == b' ') {
                return refuse(BAD_LINE_NUMBER);
            }
            text = trim_spaces(after);
        }
        if let Some(star) = text.iter().position(|&b| b == b'*') {
            let sum = &text[star + 1..];
            if !numbered || sum.is_empty() || !sum.iter().all(u8::is_ascii_digit) {
                return refuse(STRAY_STAR);
            }
            text = trim_spaces(&text[..star]);
        }
        if text.is_empty() {
            return Ok(());
        }
        self.commands += 1;
        let first_word = &text[..text.iter().position(|&b| b == b' ').unwrap_or(text.len())];
        if !text[0].is_ascii_alphabetic() {
            return refuse("a command must start with a letter");
        }
        if META.iter().any(|m| m.as_bytes() == first_word) {
            return refuse(
                "a RepRapFirmware meta command; conditions, variables and expressions cannot be checked",
            );
        }
        // Where commands start: the line's first word, and every G or M followed by a
        // digit outside quotes (RepRapFirmware runs each).
        let mut starts = [0usize; MAX_COMMANDS];
        let mut count = 1;
        let mut quoted = false;
        for (i, &b) in text.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b'G' | b'g' | b'M' | b'm'
                    if i > 0 && !quoted && text.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                {
                    if count == MAX_COMMANDS {
                        return refuse("too many commands on one line");
                    }
                    starts[count] = i;
                    count += 1;
                }
                _ => {}
            }
        }
        let several = count > 1;
        for k in 0..count {
            let end = if k + 1 < count {
                starts[k + 1]
            } else {
                text.len()
            };
            let piece = &text[starts[k]..end];
            match word(piece, k == 0).map_err(|why| format!("line {n}: {why}"))? {
                Word::Classic {
                    letter,
                    number,
                    subcode,
                    rest,
                } => {
                    let name = || format!("{}{number}", char::from(letter.to_ascii_uppercase()));
                    if let Some(why) = forbidden(letter, number) {
                        return refuse(&format!("{} {why}; it is not accepted", name()));
                    }
                    if let Some(spec) = heating(letter, number).filter(|h| h.applies(rest)) {
                        let name = name();
                        if several {
                            return refuse(&format!(
                                "{name} shares its line with another command; firmware disagree which runs"
                            ));
                        }
                        if subcode {
                            return refuse(&format!(
                                "{name} with a subcode; write the command plainly"
                            ));
                        }
                        self.check_heating(n, &name, spec, rest)?;
                    }
                }
                // Klipper reads the whole line as one command: its parameters run to the
                // end of the line, past any `G`/`M` RepRapFirmware would start at.
                Word::Klipper { name, .. } => {
                    self.check_klipper(n, name, &text[name.len()..])?;
                }
                Word::Other => {}
            }
        }
        Ok(())
    }

    /// A heating command's words, written plainly, within the limits.
    fn check_heating(&self, n: u64, name: &str, spec: Heating, rest: &[u8]) -> Result<(), String> {
        let refuse = |why: String| Err(format!("line {n}: {why}"));
        if !rest.is_empty() && rest[0] != b' ' {
            return refuse(format!("{name}: put a space after the command"));
        }
        if rest.contains(&b'"') {
            return refuse(format!("{name} with a quoted string"));
        }
        // M303 names the heater it tunes in its `E`, with or without a temperature.
        let tuned = if name == "M303" {
            Some(autotune_heater(rest).ok_or_else(|| {
                format!("line {n}: M303 with a heater (E) that is not -2, -1 or a tool number")
            })?)
        } else {
            None
        };
        let mut seen = Vec::new();
        for w in rest.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            let letter = w[0].to_ascii_uppercase();
            let value = &w[1..];
            let shown = String::from_utf8_lossy(w).to_ascii_uppercase();
            if !letter.is_ascii_alphabetic() {
                return refuse(format!(
                    "{name}: {shown} is not a word (a letter and a number)"
                ));
            }
            if seen.contains(&letter) {
                return refuse(format!(
                    "{name} gives {} twice; firmware disagree which counts",
                    char::from(letter)
                ));
            }
            seen.push(letter);
            if let Some(&(_, heater)) = spec.temperatures.iter().find(|(l, _)| *l == letter) {
                let heater = tuned.unwrap_or(heater);
                let values: Vec<&[u8]> = if spec.lists {
                    value.split(|&b| b == b':').collect()
                } else {
                    vec![value]
                };
                for v in values {
                    self.check_temperature(n, &format!("{name} {shown}"), v, heater)?;
                }
            } else if spec.others.contains(&letter) {
                if signed_number(value).is_none() {
                    return refuse(format!("{name} {shown}: not a plain number"));
                }
            } else {
                return refuse(format!("{name} does not take {} here", char::from(letter)));
            }
        }
        Ok(())
    }

    fn check_temperature(
        &self,
        n: u64,
        what: &str,
        value: &[u8],
        heater: Heater,
    ) -> Result<(), String> {
        let Some(temp) = plain_number(value) else {
            return Err(format!(
                "line {n}: {what} has a temperature that is not a plain number"
            ));
        };
        let max = heater.limit(&self.profile);
        if temp > max {
            return Err(format!(
                "line {n}: {what} sets the {} to {temp} °C; the {} allows at most {max} °C",
                heater.name(),
                self.profile.model
            ));
        }
        Ok(())
    }

    /// A Klipper command: `KEY=VALUE` words, each key once; heating ones checked,
    /// forbidden ones refused, and in a macro every numeric temperature-like value.
    fn check_klipper(&self, n: u64, name: &str, rest: &[u8]) -> Result<(), String> {
        let refuse = |why: String| Err(format!("line {n}: {why}"));
        let upper = name.to_ascii_uppercase();
        if FORBIDDEN_KLIPPER.contains(&upper.as_str()) {
            return refuse(format!("{upper} is not accepted: it cannot be checked"));
        }
        if rest.contains(&b'"') {
            return refuse(format!("{upper} with a quoted value"));
        }
        let mut params: Vec<(String, &[u8])> = Vec::new();
        for w in rest.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            let Some(eq) = w.iter().position(|&b| b == b'=') else {
                return refuse(format!(
                    "{upper}: {} is not KEY=VALUE",
                    String::from_utf8_lossy(w)
                ));
            };
            let key = String::from_utf8_lossy(&w[..eq]).to_ascii_uppercase();
            if key.is_empty() || params.iter().any(|(k, _)| *k == key) {
                return refuse(format!("{upper} gives {key} twice, or no key"));
            }
            params.push((key, &w[eq + 1..]));
        }
        let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        if HEATING_KLIPPER.contains(&upper.as_str()) {
            let heater =
                klipper_heater(&String::from_utf8_lossy(get("HEATER").unwrap_or_default()));
            if let Some(target) = get("TARGET") {
                let what = format!("{upper} TARGET={}", String::from_utf8_lossy(target));
                self.check_temperature(n, &what, target, heater)?;
            }
            return Ok(());
        }
        for (key, value) in &params {
            let Some(heater) = macro_heater(key) else {
                continue;
            };
            if looks_numeric(value) {
                let what = format!("{upper} {key}={}", String::from_utf8_lossy(value));
                self.check_temperature(n, &what, value, heater)?;
            }
        }
        Ok(())
    }
}

const LONE_CR: &str = "a carriage return inside a line; firmware disagree where the line ends";
const NUL: &str = "contains a NUL byte; G-code must be text";
const CONTROL: &str = "contains a control character; G-code must be text";
const NOT_UTF8: &str = "is not UTF-8 text; G-code must be text";
const NOT_ASCII: &str = "characters outside ASCII in a command; firmware read them differently";
const UNBALANCED_QUOTES: &str = "an unclosed quote; firmware disagree where the command ends";
const BAD_LINE_NUMBER: &str = "a line number must be N, digits and a space";
const STRAY_STAR: &str =
    "a `*` that is not a checksum after a line number; firmware read it differently";

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    s
}

/// `-?[0-9]+(.[0-9]+)?`
fn signed_number(s: &[u8]) -> Option<f64> {
    plain_number(s.strip_prefix(b"-").unwrap_or(s))
}

/// The heater Marlin's `M303` autotunes, by its `E` word: none or a tool number, the
/// nozzle; -1 the bed; -2 the chamber; anything else (not an integer) `None`.
pub fn autotune_heater(rest: &[u8]) -> Option<Heater> {
    let e = rest
        .split(|&b| b == b' ')
        .find(|w| w.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'E')));
    let Some(e) = e else {
        return Some(Heater::Nozzle);
    };
    let value = &e[1..];
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number: i32 = std::str::from_utf8(value).ok()?.parse().ok()?;
    match number {
        -1 => Some(Heater::Bed),
        -2 => Some(Heater::Chamber),
        n if n >= 0 => Some(Heater::Nozzle),
        _ => None,
    }
}

/// Whether a macro's value could be read as a number (so it must be a plain one).
pub fn looks_numeric(value: &[u8]) -> bool {
    match value.first() {
        Some(b) if b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.') => true,
        _ => {
            let lower = value.to_ascii_lowercase();
            lower.starts_with(b"inf") || lower.starts_with(b"nan")
        }
    }
}

/// What a piece of a line is. The first piece may be a Klipper command; the others
/// start with G or M and a digit.
fn word(piece: &[u8], first: bool) -> Result<Word<'_>, String> {
    let Some(&letter) = piece.first() else {
        return Ok(Word::Other);
    };
    if letter.is_ascii_alphabetic() && piece.get(1).is_some_and(u8::is_ascii_digit) {
        let digits = piece[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        let mut rest = &piece[1 + digits..];
        let number: u32 = std::str::from_utf8(&piece[1..1 + digits])
            .ok()
            .map(|d| {
                let d = d.trim_start_matches('0');
                if d.len() > 9 {
                    u32::MAX
                } else {
                    d.parse().unwrap_or(0)
                }
            })
            .unwrap_or(u32::MAX);
        // Marlin builds the number in an int that wraps (M65640 is M104 on an 8-bit
        // board): a command above 9999 is no command any firmware has.
        if number > MAX_COMMAND_NUMBER && matches!(letter.to_ascii_uppercase(), b'G' | b'M') {
            return Err(format!(
                "{}{} is no command; firmware could read the number otherwise",
                char::from(letter.to_ascii_uppercase()),
                String::from_utf8_lossy(&piece[1..1 + digits])
            ));
        }
        let mut subcode = false;
        if let [b'.', tail @ ..] = rest {
            let sub = tail.iter().take_while(|b| b.is_ascii_digit()).count();
            subcode = true;
            rest = &tail[sub..];
        }
        return Ok(Word::Classic {
            letter,
            number,
            subcode,
            rest,
        });
    }
    if matches!(letter.to_ascii_uppercase(), b'G' | b'M' | b'T') && piece.get(1) == Some(&b' ') {
        return Err(format!(
            "`{} ` and then a number: write the command without the space",
            char::from(letter)
        ));
    }
    if first && letter.is_ascii_alphabetic() {
        let end = piece.iter().position(|&b| b == b' ').unwrap_or(piece.len());
        let name = &piece[..end];
        if name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            // ASCII was checked: the name is UTF-8.
            let name = std::str::from_utf8(name).unwrap_or_default();
            return Ok(Word::Klipper { name });
        }
    }
    Ok(Word::Other)
}

/// Checks a whole file at once (tests, and anything already in memory).
pub fn check(profile: Profile, text: &[u8]) -> Result<(), String> {
    let mut c = Checker::new(profile);
    c.feed(text)?;
    c.finish()
}

#[cfg(test)]
mod tests;
