//! The dialect's rules read a second time, apart from [`crate::Checker`]: the whole file
//! at once, line by line, as text, in the order the rules are written in the crate's
//! documentation, sharing only the tables (which commands heat, which are forbidden).
//! Slow and plain on purpose. The fuzz target feeds both the same bytes and requires
//! the same verdict — accepted, or refused at the same line.

use crate::{
    FORBIDDEN_KLIPPER, HEATING_KLIPPER, Heater, MAX_COMMAND_NUMBER, MAX_COMMANDS, MAX_LINE, META,
    Profile, forbidden, heating, klipper_heater, macro_heater,
};

/// Where the file is refused: a line (counted from 1), or the file as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    RefusedAt(u64),
    NoCommand,
}

/// The verdict on a whole file.
pub fn verdict(profile: Profile, text: &[u8]) -> Verdict {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    // What follows the last LF is a line only if it holds something.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut commands = 0;
    for (i, line) in lines.iter().enumerate() {
        match line_verdict(profile, line) {
            Line::Bad => return Verdict::RefusedAt(i as u64 + 1),
            Line::Command => commands += 1,
            Line::Blank => {}
        }
    }
    if commands == 0 {
        Verdict::NoCommand
    } else {
        Verdict::Accepted
    }
}

enum Line {
    Bad,
    Blank,
    Command,
}

fn is_control(c: char) -> bool {
    c == '\u{7f}' || (c as u32) < 0x20
}

fn line_verdict(profile: Profile, line: &[u8]) -> Line {
    let line = match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    };
    if line.len() > MAX_LINE {
        return Line::Bad;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Line::Bad;
    };
    let (code, comment) = match text.find(';') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    if comment.chars().any(|c| c != '\t' && is_control(c)) {
        return Line::Bad;
    }
    if code
        .chars()
        .any(|c| !c.is_ascii() || is_control(c) || "\\(){}#'".contains(c))
    {
        return Line::Bad;
    }
    if code.matches('"').count() % 2 != 0 {
        return Line::Bad;
    }
    let mut rest = code.trim_matches(' ');
    let numbered = rest.starts_with(['N', 'n']);
    if numbered {
        let after_n = &rest[1..];
        let number_end = after_n
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_n.len());
        if number_end == 0 {
            return Line::Bad;
        }
        let after = &after_n[number_end..];
        if !after.is_empty() && !after.starts_with(' ') {
            return Line::Bad;
        }
        rest = after.trim_matches(' ');
    }
    if let Some((before, sum)) = rest.split_once('*') {
        if !numbered || sum.is_empty() || !sum.chars().all(|c| c.is_ascii_digit()) {
            return Line::Bad;
        }
        rest = before.trim_matches(' ');
    }
    if rest.is_empty() {
        return Line::Blank;
    }
    let first = rest.split(' ').next().unwrap_or_default();
    if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) || META.contains(&first) {
        return Line::Bad;
    }
    // The commands RepRapFirmware would run: split before every G or M that is
    // followed by a digit, outside quotes.
    let chars: Vec<char> = rest.chars().collect();
    let mut pieces: Vec<String> = vec![String::new()];
    let mut in_quotes = false;
    for (i, &c) in chars.iter().enumerate() {
        let starts = i > 0
            && !in_quotes
            && "GgMm".contains(c)
            && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if starts {
            pieces.push(String::new());
        }
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if let Some(p) = pieces.last_mut() {
            p.push(c);
        }
    }
    if pieces.len() > MAX_COMMANDS {
        return Line::Bad;
    }
    for (i, piece) in pieces.iter().enumerate() {
        if !piece_ok(profile, piece, rest, i == 0, pieces.len() > 1) {
            return Line::Bad;
        }
    }
    Line::Command
}

/// A command's letter, number (`None` when too large to matter), whether it has a
/// subcode, and the text after it; `None` unless the piece starts with a letter and a
/// digit.
fn classic(piece: &str) -> Option<(char, Option<u32>, bool, &str)> {
    let mut it = piece.chars();
    let letter = it.next()?;
    if !letter.is_ascii_alphabetic() || !it.next()?.is_ascii_digit() {
        return None;
    }
    let body = &piece[1..];
    let digits_end = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    let number = body[..digits_end]
        .parse::<u64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok());
    let mut after = &body[digits_end..];
    let mut subcode = false;
    if let Some(tail) = after.strip_prefix('.') {
        subcode = true;
        let sub_end = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        after = &tail[sub_end..];
    }
    Some((letter.to_ascii_uppercase(), number, subcode, after))
}

/// `piece` of the line `whole` (a Klipper command, the first piece, takes its parameters
/// from the whole line).
fn piece_ok(profile: Profile, piece: &str, whole: &str, first: bool, several: bool) -> bool {
    if let Some((letter, number, subcode, after)) = classic(piece) {
        let number = number.unwrap_or(u32::MAX);
        if "GM".contains(letter) && number > MAX_COMMAND_NUMBER {
            return false;
        }
        if forbidden(letter as u8, number).is_some() {
            return false;
        }
        let heats = |spec: &crate::Heating| {
            !spec.optional
                || after.chars().any(|c| {
                    spec.temperatures
                        .iter()
                        .any(|(l, _)| char::from(*l) == c.to_ascii_uppercase())
                })
        };
        return match heating(letter as u8, number).filter(heats) {
            None => true,
            Some(spec) => {
                !several
                    && !subcode
                    && heating_words_ok(profile, spec, letter == 'M' && number == 303, after)
            }
        };
    }
    let mut chars = piece.chars();
    let c0 = chars.next().unwrap_or(' ');
    if "GMTgmt".contains(c0) && chars.next() == Some(' ') {
        return false;
    }
    if first && c0.is_ascii_alphabetic() {
        let name = piece.split(' ').next().unwrap_or_default();
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return klipper_ok(profile, name, &whole[name.len()..]);
        }
    }
    true
}

/// `[0-9]+(.[0-9]+)?`, at most ten characters.
fn plain(value: &str) -> Option<f64> {
    if value.len() > 10 || value.is_empty() {
        return None;
    }
    let mut parts = value.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    value.parse().ok()
}

fn within(profile: Profile, heater: Heater, value: &str) -> bool {
    let limit = match heater {
        Heater::Nozzle => profile.nozzle_max,
        Heater::Bed => profile.bed_max,
        Heater::Chamber => profile.chamber_max,
    };
    plain(value).is_some_and(|t| t <= limit)
}

/// The heater `M303` tunes: `E` absent or a tool number is the nozzle, -1 the bed, -2
/// the chamber; any other `E` (not an integer of at most four digits) is none.
fn autotune(words: &[&str]) -> Option<Heater> {
    let Some(e) = words.iter().find(|w| w.starts_with(['E', 'e'])) else {
        return Some(Heater::Nozzle);
    };
    let value = &e[1..];
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match value.parse::<i32>().ok()? {
        -1 => Some(Heater::Bed),
        -2 => Some(Heater::Chamber),
        n if n >= 0 => Some(Heater::Nozzle),
        _ => None,
    }
}

fn heating_words_ok(
    profile: Profile,
    spec: crate::Heating,
    is_autotune: bool,
    after: &str,
) -> bool {
    if !(after.is_empty() || after.starts_with(' ')) || after.contains('"') {
        return false;
    }
    let words: Vec<&str> = after.split(' ').filter(|w| !w.is_empty()).collect();
    let tuned = if is_autotune {
        match autotune(&words) {
            Some(h) => Some(h),
            None => return false,
        }
    } else {
        None
    };
    let mut letters = String::new();
    for w in words {
        let letter = w.chars().next().unwrap_or(' ').to_ascii_uppercase();
        let value = &w[1..];
        if !letter.is_ascii_alphabetic() || letters.contains(letter) {
            return false;
        }
        letters.push(letter);
        match spec
            .temperatures
            .iter()
            .find(|(l, _)| char::from(*l) == letter)
        {
            Some(&(_, heater)) => {
                let heater = tuned.unwrap_or(heater);
                let ok = if spec.lists {
                    value.split(':').all(|v| within(profile, heater, v))
                } else {
                    within(profile, heater, value)
                };
                if !ok {
                    return false;
                }
            }
            None => {
                if !spec.others.contains(&(letter as u8)) {
                    return false;
                }
                if plain(value.strip_prefix('-').unwrap_or(value)).is_none() {
                    return false;
                }
            }
        }
    }
    true
}

fn klipper_ok(profile: Profile, name: &str, args: &str) -> bool {
    let name = name.to_ascii_uppercase();
    if FORBIDDEN_KLIPPER.contains(&name.as_str()) || args.contains('"') {
        return false;
    }
    let mut keys: Vec<String> = Vec::new();
    let mut values: Vec<&str> = Vec::new();
    for word in args.split(' ').filter(|w| !w.is_empty()) {
        let Some((key, value)) = word.split_once('=') else {
            return false;
        };
        let key = key.to_ascii_uppercase();
        if key.is_empty() || keys.contains(&key) {
            return false;
        }
        keys.push(key);
        values.push(value);
    }
    if HEATING_KLIPPER.contains(&name.as_str()) {
        let heater_name = keys
            .iter()
            .position(|k| k == "HEATER")
            .map_or("", |i| values[i]);
        return match keys.iter().position(|k| k == "TARGET") {
            Some(i) => within(profile, klipper_heater(heater_name), values[i]),
            None => true,
        };
    }
    keys.iter().zip(values).all(|(key, value)| {
        let numeric = value.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c))
            || value.to_ascii_lowercase().starts_with("inf")
            || value.to_ascii_lowercase().starts_with("nan");
        match macro_heater(key) {
            Some(heater) if numeric => within(profile, heater, value),
            _ => true,
        }
    })
}
