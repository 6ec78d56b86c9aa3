//! UFP packages (Ultimaker Format Package: an OPC zip holding `3D/model.gcode`),
//! checked after they arrive and before anyone may print them: a well-formed zip, a
//! content-types part, the G-code inside checked like any G-code. Read straight from
//! the sealed spool file, decrypting chunk by chunk: the plaintext never touches disk.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use uuid::Uuid;

use crate::seal::{CHUNK, HEADER, Opener, chunk_span};
use printworks_gcode::{Checker, Profile};

/// The G-code part of a UFP package.
pub const GCODE_PART: &str = "3D/model.gcode";
/// Most entries a package may hold.
const MAX_ENTRIES: usize = 10_000;
/// Largest central directory read (10 000 entries with generous names).
const MAX_DIRECTORY_BYTES: u64 = 4 * 1024 * 1024;

/// From the zip's end-of-central-directory record: how many entries it says it holds
/// and how large its directory is. Zip64 (only needed beyond 65 535 entries or 4 GiB)
/// is refused.
fn end_of_directory<R: Read + Seek>(reader: &mut R) -> Result<(usize, u64), String> {
    const SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    let bad =
        || "not a well-formed UFP package (a zip archive): no end of central directory".to_owned();
    let size = reader.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let tail_len = size.min(22 + 65_535);
    reader
        .seek(SeekFrom::Start(size - tail_len))
        .map_err(|e| e.to_string())?;
    let mut tail = vec![0u8; tail_len as usize];
    reader.read_exact(&mut tail).map_err(|e| e.to_string())?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == SIGNATURE)
        .ok_or_else(bad)?;
    let u16_at = |o: usize| u16::from_le_bytes([tail[at + o], tail[at + o + 1]]);
    let u32_at = |o: usize| {
        u32::from_le_bytes([
            tail[at + o],
            tail[at + o + 1],
            tail[at + o + 2],
            tail[at + o + 3],
        ])
    };
    let entries = u16_at(10);
    let directory = u32_at(12);
    if entries == u16::MAX || directory == u32::MAX {
        return Err("Zip64 UFP packages are not supported".into());
    }
    reader.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok((usize::from(entries), u64::from(directory)))
}

/// A sealed file, read as its plaintext (`Read + Seek`), one chunk in memory at a time.
pub struct SealedFile {
    file: std::fs::File,
    opener: Opener,
    size: u64,
    pos: u64,
    chunk: Option<(u64, Vec<u8>)>,
}

impl SealedFile {
    pub fn open(path: &Path, data_key: &[u8; 32], job: Uuid, size: u64) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut header = vec![0u8; HEADER as usize];
        file.read_exact(&mut header)?;
        let opener = Opener::new(data_key, job, size, &header).map_err(std::io::Error::other)?;
        Ok(Self {
            file,
            opener,
            size,
            pos: 0,
            chunk: None,
        })
    }

    fn load(&mut self, index: u64) -> std::io::Result<&[u8]> {
        if self.chunk.as_ref().is_none_or(|(i, _)| *i != index) {
            let (start, len) = chunk_span(self.size, index);
            self.file.seek(SeekFrom::Start(start))?;
            let mut sealed = vec![0u8; len as usize];
            self.file.read_exact(&mut sealed)?;
            let plain = self
                .opener
                .open(index, sealed)
                .map_err(std::io::Error::other)?;
            self.chunk = Some((index, plain));
        }
        Ok(self
            .chunk
            .as_ref()
            .map(|(_, c)| c.as_slice())
            .unwrap_or_default())
    }
}

impl Read for SealedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let index = self.pos / CHUNK;
        let offset = (self.pos % CHUNK) as usize;
        let chunk = self.load(index)?;
        let n = (chunk.len() - offset).min(buf.len());
        buf[..n].copy_from_slice(&chunk[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SealedFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// How far a package may unpack: this many times its own size, and never beyond
/// [`MAX_UNPACKED_BYTES`], counted over every part (as the directory declares them, and
/// again as they are read). G-code deflates about five to one; a zip bomb, a thousand.
pub const MAX_INFLATION_RATIO: u64 = 32;
pub const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The relationship type of a package's G-code (what Cura's UFPWriter writes).
const GCODE_RELATIONSHIP: &str = "http://schemas.ultimaker.org/package/2018/relationships/gcode";

fn malformed(e: impl std::fmt::Display) -> String {
    format!("not a well-formed UFP package (a zip archive): {e}")
}

/// A part name as readers may take it: without leading slashes, with `\` as `/`,
/// percent-decoded, in lower case (Cura writes `/3D/model.gcode`; other zip readers
/// drop the slash, Windows turns `\` into `/`). Two parts that are the same here are
/// refused: which of them a printer reads is anyone's guess.
fn normalised(name: &str) -> String {
    let slashed = name.replace('\\', "/");
    let decoded = percent_encoding::percent_decode_str(&slashed).decode_utf8_lossy();
    decoded.trim_start_matches('/').to_lowercase()
}

/// What kind of part a printer (or a reader on it) might act on.
enum Part {
    /// G-code: checked like any G-code.
    Gcode,
    /// A material profile: its temperatures are checked.
    Material,
    /// The package's relationships: where its G-code is.
    Relationships,
    Other,
}

fn kind(name: &str) -> Result<Part, String> {
    if name.ends_with(".gz") || name.ends_with(".bgcode") {
        return Err(format!(
            "the UFP package holds {name}: compressed or binary G-code cannot be checked"
        ));
    }
    Ok(
        if name.ends_with(".gcode") || name.ends_with(".gco") || name.ends_with(".g") {
            Part::Gcode
        } else if name.ends_with(".fdm_material") {
            Part::Material
        } else if name == "_rels/.rels" {
            Part::Relationships
        } else {
            Part::Other
        },
    )
}

/// Checks a UFP package; the answer says what is wrong, for the person who sent it.
///
/// Every part a printer might act on is checked: every G-code part (not only
/// `3D/model.gcode`), the temperatures of every material profile, and the package's
/// relationships, whose G-code must be `/3D/model.gcode`. The package may unpack to at
/// most [`MAX_INFLATION_RATIO`] times its size, never beyond [`MAX_UNPACKED_BYTES`].
pub fn check<R: Read + Seek>(mut reader: R, profile: Profile, size: u64) -> Result<(), String> {
    let limit = size
        .saturating_mul(MAX_INFLATION_RATIO)
        .min(MAX_UNPACKED_BYTES);
    // The directory's size is read first: a package with millions of entries must not
    // be parsed into memory to find out.
    let (entries, directory_size) = end_of_directory(&mut reader)?;
    if entries > MAX_ENTRIES || directory_size > MAX_DIRECTORY_BYTES {
        return Err(format!("a UFP package holds at most {MAX_ENTRIES} parts"));
    }
    let mut zip = zip::ZipArchive::new(reader).map_err(malformed)?;
    // Names, kinds and declared sizes, before anything is unpacked.
    let mut names = std::collections::HashSet::new();
    let mut parts = Vec::new();
    let mut declared = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(malformed)?;
        let raw = entry.name().map_err(malformed)?.into_owned();
        let name = normalised(&raw);
        if name.split('/').any(|seg| seg == "..") || name.contains(':') {
            return Err(format!(
                "the UFP package holds a part named {raw}, outside the package"
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("the UFP package holds two parts named {raw}"));
        }
        declared = declared.saturating_add(entry.size());
        let part = kind(&name)?;
        // Named in messages as the package names it, without the leading slash.
        parts.push((i, raw.trim_start_matches('/').to_owned(), part));
    }
    if names.len() != entries {
        return Err("the UFP package holds two parts of the same name".into());
    }
    if declared > limit {
        return Err(format!(
            "the UFP package unpacks to more than {limit} bytes ({MAX_INFLATION_RATIO} times its size at most)"
        ));
    }
    if !names.contains("[content_types].xml") {
        return Err("not a well-formed UFP package: it has no [Content_Types].xml".into());
    }
    if !names.contains(GCODE_PART_NORMALISED) {
        return Err(format!("the UFP package holds no {GCODE_PART}"));
    }
    let mut unpacked = 0u64;
    for (index, name, part) in parts {
        if matches!(part, Part::Other) {
            continue;
        }
        let mut file = zip.by_index(index).map_err(malformed)?;
        let mut read_part = |feed: &mut dyn FnMut(&[u8]) -> Result<(), String>| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| format!("{name} in the UFP package cannot be read: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                unpacked += n as u64;
                if unpacked > limit {
                    return Err(format!(
                        "the UFP package unpacks to more than {limit} bytes ({MAX_INFLATION_RATIO} times its size at most)"
                    ));
                }
                feed(&buf[..n])?;
            }
        };
        match part {
            Part::Gcode => {
                let mut checker = Checker::new(profile);
                read_part(&mut |b| checker.feed(b).map_err(|e| format!("{name}: {e}")))?;
                checker.finish().map_err(|e| format!("{name}: {e}"))?;
            }
            Part::Material | Part::Relationships => {
                let mut text = Vec::new();
                read_part(&mut |b| {
                    if text.len() + b.len() > MAX_XML_PART {
                        return Err(format!("{name} in the UFP package is too large"));
                    }
                    text.extend_from_slice(b);
                    Ok(())
                })?;
                if matches!(part, Part::Material) {
                    check_material(&name, &text, profile)?;
                } else {
                    check_relationships(&text)?;
                }
            }
            Part::Other => {}
        }
    }
    Ok(())
}

/// Largest material profile or relationships part read.
const MAX_XML_PART: usize = 4 * 1024 * 1024;
const GCODE_PART_NORMALISED: &str = "3d/model.gcode";

/// The value of the unprefixed attribute `key` of an element, if it has one — the one
/// an OPC or ElementTree reader takes (`x:key` is another attribute). An element whose
/// attributes do not parse (a duplicate, a broken value) is refused, not skimmed.
fn attribute(e: &quick_xml::events::BytesStart<'_>, key: &str) -> Result<Option<String>, String> {
    let malformed =
        |e: &dyn std::fmt::Display| format!("an XML part of the UFP package is malformed: {e}");
    // Every attribute is read, so a duplicate after the one wanted is still found.
    let mut found = None;
    for a in e.attributes() {
        let a = a.map_err(|e| malformed(&e))?;
        if a.key.prefix().is_none() && a.key.local_name().as_ref() == key {
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| malformed(&e))?;
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// The package's relationships: any G-code relationship must point at `/3D/model.gcode`
/// (the part every reader takes); one pointing elsewhere is refused.
fn check_relationships(xml: &[u8]) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("_rels/.rels in the UFP package is not XML: {e}"))?;
        match event {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "Relationship" => {
                let gcode = attribute(&e, "Type")?.as_deref() == Some(GCODE_RELATIONSHIP);
                let target = attribute(&e, "Target")?.unwrap_or_default();
                if gcode && normalised(&target) != GCODE_PART_NORMALISED {
                    return Err(format!(
                        "the UFP package's G-code relationship points at {target}, not {GCODE_PART}"
                    ));
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

/// A material profile (fdm_materials XML): every temperature setting in it, for any
/// machine, within what the printer's model allows. A temperature written with an
/// entity or character reference is refused rather than decoded.
fn check_material(name: &str, xml: &[u8], profile: Profile) -> Result<(), String> {
    use quick_xml::events::Event;
    let not_xml = |e: &dyn std::fmt::Display| format!("{name} in the UFP package is not XML: {e}");
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    // Inside a temperature setting: its key, where it applies and the text so far.
    let mut open: Option<(String, &'static str, f64, String)> = None;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| not_xml(&e))?;
        match event {
            Event::Start(e) if e.local_name().as_ref() == "setting" => {
                let key = attribute(&e, "key")?.unwrap_or_default();
                open = match key.as_str() {
                    "print temperature" | "standby temperature" => {
                        Some((key, "nozzle", profile.nozzle_max, String::new()))
                    }
                    "heated bed temperature" => Some((key, "bed", profile.bed_max, String::new())),
                    "build volume temperature" => {
                        Some((key, "chamber", profile.chamber_max, String::new()))
                    }
                    _ => None,
                };
            }
            Event::Text(t) => {
                if let Some((.., text)) = &mut open {
                    text.push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0));
                }
            }
            Event::CData(t) => {
                if let Some((.., text)) = &mut open {
                    text.push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0));
                }
            }
            Event::GeneralRef(_) => {
                if let Some((key, ..)) = &open {
                    return Err(format!(
                        "{name}: the {key} is written with a reference; write the number"
                    ));
                }
            }
            Event::End(_) => {
                if let Some((key, what, max, text)) = open.take() {
                    let value: f64 = text.trim().parse().map_err(|_| {
                        format!("{name}: the {key} is not a number ({})", text.trim())
                    })?;
                    if !value.is_finite() || value > max {
                        return Err(format!(
                            "{name}: the {key} of {value} °C is more than the {} allows for the {what} ({max} °C)",
                            profile.model
                        ));
                    }
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}
