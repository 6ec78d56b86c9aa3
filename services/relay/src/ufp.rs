//! UFP packages (Ultimaker Format Package: an OPC zip holding `3D/model.gcode`),
//! checked after they arrive and before anyone may print them: a well-formed zip, a
//! content-types part, the G-code inside checked like any G-code. Read straight from
//! the sealed spool file, decrypting chunk by chunk: the plaintext never touches disk.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use uuid::Uuid;

use crate::gcode::{Checker, Profile};
use crate::seal::{CHUNK, HEADER, Opener, chunk_span};

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

/// Checks a UFP package; the answer says what is wrong, for the person who sent it.
/// `max_unpacked` bounds how much G-code is read (a zip bomb stops there).
pub fn check<R: Read + Seek>(
    mut reader: R,
    profile: Profile,
    max_unpacked: u64,
) -> Result<(), String> {
    // The directory's size is read first: a package with millions of entries must not
    // be parsed into memory to find out.
    let (entries, directory_size) = end_of_directory(&mut reader)?;
    if entries > MAX_ENTRIES || directory_size > MAX_DIRECTORY_BYTES {
        return Err(format!("a UFP package holds at most {MAX_ENTRIES} parts"));
    }
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| format!("not a well-formed UFP package (a zip archive): {e}"))?;
    // Two parts of one name: which one a printer reads is anyone's guess. (The zip
    // crate keeps one entry per name, so a duplicate shows as a missing entry.)
    let mut names = std::collections::HashSet::new();
    for i in 0..zip.len() {
        let name = zip
            .by_index_raw(i)
            .map_err(|e| format!("not a well-formed UFP package (a zip archive): {e}"))?
            .name()
            .map_err(|e| format!("not a well-formed UFP package (a zip archive): {e}"))?
            .into_owned();
        if !names.insert(name.clone()) {
            return Err(format!("the UFP package holds two parts named {name}"));
        }
    }
    if names.len() != entries {
        return Err("the UFP package holds two parts of the same name".into());
    }
    if zip.index_for_name("[Content_Types].xml").is_none() {
        return Err("not a well-formed UFP package: it has no [Content_Types].xml".into());
    }
    let mut part = zip
        .by_name(GCODE_PART)
        .map_err(|_| format!("the UFP package holds no {GCODE_PART}"))?;
    let mut checker = Checker::new(profile);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = part
            .read(&mut buf)
            .map_err(|e| format!("{GCODE_PART} in the UFP package cannot be read: {e}"))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > max_unpacked {
            return Err(format!(
                "{GCODE_PART} unpacks to more than {max_unpacked} bytes"
            ));
        }
        checker
            .feed(&buf[..n])
            .map_err(|e| format!("{GCODE_PART}: {e}"))?;
    }
    checker.finish().map_err(|e| format!("{GCODE_PART}: {e}"))
}
