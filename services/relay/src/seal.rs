//! Encryption at rest of job files: AES-256-GCM in 64 KiB chunks under a per-job data
//! key, in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
//! authenticated-encryption and its nonce-reuse misuse-resistance", 2015): each chunk's
//! nonce is a random 7-byte prefix, the chunk's index (32 bits, big-endian) and a byte
//! that says whether it is the last chunk. So every chunk is authenticated on its own
//! (a download can start anywhere, for `Range`), and reordering, dropping, duplicating
//! or truncating chunks, or moving a blob to another job (the job id is the associated
//! data), fails authentication.
//!
//! Layout: `PWB1` ‖ nonce prefix (7 bytes) ‖ chunk₀ ‖ chunk₁ ‖ … where each chunk is
//! ciphertext ‖ tag (16 bytes); every chunk but the last holds [`CHUNK`] bytes of
//! plaintext, the last 0 to [`CHUNK`]. The data key is sealed with the master key and
//! kept in the job's row.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use printworks_common::crypto::random_bytes;
use uuid::Uuid;

/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
/// The GCM tag after each chunk.
pub const TAG: u64 = 16;
const MAGIC: &[u8; 4] = b"PWB1";
const PREFIX: usize = 7;
/// Bytes before the first chunk.
pub const HEADER: u64 = (MAGIC.len() + PREFIX) as u64;

/// How many chunks a file of `size` bytes is sealed in (an empty file is one empty
/// final chunk).
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// Where chunk `index` starts in the sealed blob, and how long it is there.
pub fn chunk_span(size: u64, index: u64) -> (u64, u64) {
    let plain = (size - (index * CHUNK).min(size)).min(CHUNK);
    (HEADER + index * (CHUNK + TAG), plain + TAG)
}

fn key(data_key: &[u8; 32]) -> LessSafeKey {
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("a 32-byte AES key"))
}

fn nonce(prefix: &[u8; PREFIX], index: u64, last: bool) -> Option<Nonce> {
    let index = u32::try_from(index).ok()?;
    let mut n = [0u8; 12];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Some(Nonce::assume_unique_for_key(n))
}

/// What a job file's chunks are bound to, beside its id.
pub const JOB_DOMAIN: &[u8] = b"printworks-job-v1";

fn aad(domain: &[u8], id: Uuid) -> Vec<u8> {
    let mut a = domain.to_vec();
    a.extend_from_slice(id.as_bytes());
    a
}

/// A new random data key.
pub fn new_data_key() -> [u8; 32] {
    random_bytes::<32>()
}

/// Seals a file as it streams: [`Sealer::push`] plaintext in any pieces, then
/// [`Sealer::finish`]. A full chunk is sealed only once more data follows it, so the
/// last chunk is always known to be the last.
pub struct Sealer {
    key: LessSafeKey,
    prefix: [u8; PREFIX],
    aad: Vec<u8>,
    index: u64,
    buffer: Vec<u8>,
}

impl Sealer {
    /// The sealer of a job file and the header to write first.
    pub fn new(data_key: &[u8; 32], job: Uuid) -> (Self, Vec<u8>) {
        Self::for_domain(data_key, JOB_DOMAIN, job)
    }

    /// A sealer whose chunks are bound to `domain` and `id` (a job file, a backup, ...),
    /// and the header to write first.
    pub fn for_domain(data_key: &[u8; 32], domain: &[u8], id: Uuid) -> (Self, Vec<u8>) {
        let prefix = random_bytes::<PREFIX>();
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&prefix);
        (
            Self {
                key: key(data_key),
                prefix,
                aad: aad(domain, id),
                index: 0,
                buffer: Vec::with_capacity(CHUNK as usize * 2),
            },
            header,
        )
    }

    fn seal(&mut self, plain: &mut Vec<u8>, last: bool) -> anyhow::Result<()> {
        let nonce = nonce(&self.prefix, self.index, last)
            .ok_or_else(|| anyhow::anyhow!("the file has too many chunks"))?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&self.aad[..]), plain)
            .map_err(|_| anyhow::anyhow!("AES-GCM sealing failed"))?;
        self.index += 1;
        Ok(())
    }

    /// Adds plaintext; appends to `out` the chunks that are complete.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        self.buffer.extend_from_slice(data);
        let chunk = CHUNK as usize;
        while self.buffer.len() > chunk {
            let rest = self.buffer.split_off(chunk);
            let mut plain = std::mem::replace(&mut self.buffer, rest);
            self.seal(&mut plain, false)?;
            out.extend_from_slice(&plain);
        }
        Ok(())
    }

    /// Seals what is left as the last chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut plain = std::mem::take(&mut self.buffer);
        self.seal(&mut plain, true)?;
        out.extend_from_slice(&plain);
        Ok(())
    }
}

/// Opens chunks of a sealed blob of a file of `size` bytes, in any order.
pub struct Opener {
    key: LessSafeKey,
    prefix: [u8; PREFIX],
    aad: Vec<u8>,
    size: u64,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the stored file is not a sealed job file")]
    NotSealed,
    #[error("the stored file was altered (chunk {0} does not authenticate)")]
    Tampered(u64),
}

impl Opener {
    /// From a job blob's header (its first [`HEADER`] bytes).
    pub fn new(
        data_key: &[u8; 32],
        job: Uuid,
        size: u64,
        header: &[u8],
    ) -> Result<Self, OpenError> {
        Self::for_domain(data_key, JOB_DOMAIN, job, size, header)
    }

    /// From the header of a blob sealed by [`Sealer::for_domain`] with `domain` and `id`.
    pub fn for_domain(
        data_key: &[u8; 32],
        domain: &[u8],
        id: Uuid,
        size: u64,
        header: &[u8],
    ) -> Result<Self, OpenError> {
        if header.len() != HEADER as usize || &header[..MAGIC.len()] != MAGIC {
            return Err(OpenError::NotSealed);
        }
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[MAGIC.len()..]);
        Ok(Self {
            key: key(data_key),
            prefix,
            aad: aad(domain, id),
            size,
        })
    }

    /// The plaintext of chunk `index` from its sealed bytes.
    pub fn open(&self, index: u64, mut sealed: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        let last = index + 1 == chunks(self.size);
        let (_, len) = chunk_span(self.size, index);
        if index >= chunks(self.size) || sealed.len() as u64 != len {
            return Err(OpenError::Tampered(index));
        }
        let nonce = nonce(&self.prefix, index, last).ok_or(OpenError::Tampered(index))?;
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.aad[..]), &mut sealed)
            .map_err(|_| OpenError::Tampered(index))?
            .len();
        sealed.truncate(plain_len);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &[u8; 32], job: Uuid, data: &[u8], piece: usize) -> Vec<u8> {
        let (mut s, mut out) = Sealer::new(key, job);
        for p in data.chunks(piece.max(1)) {
            s.push(p, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        out
    }

    /// The sealed size of a file of `size` bytes.
    fn sealed_size(size: u64) -> u64 {
        HEADER + size + chunks(size) * TAG
    }

    fn open_all(key: &[u8; 32], job: Uuid, size: u64, blob: &[u8]) -> Result<Vec<u8>, OpenError> {
        let o = Opener::new(key, job, size, &blob[..HEADER as usize])?;
        let mut plain = Vec::new();
        for i in 0..chunks(size) {
            let (start, len) = chunk_span(size, i);
            let end = (start + len) as usize;
            let sealed = blob
                .get(start as usize..end)
                .ok_or(OpenError::Tampered(i))?;
            plain.extend(o.open(i, sealed.to_vec())?);
        }
        if blob.len() as u64 != sealed_size(size) {
            return Err(OpenError::Tampered(chunks(size)));
        }
        Ok(plain)
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let key = new_data_key();
        let job = Uuid::new_v4();
        let c = CHUNK as usize;
        for size in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for piece in [1000, c, 7 * c] {
                let blob = seal_all(&key, job, &data, piece);
                assert_eq!(blob.len() as u64, sealed_size(size as u64), "size {size}");
                assert_eq!(
                    open_all(&key, job, size as u64, &blob).unwrap(),
                    data,
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn any_change_is_detected() {
        let key = new_data_key();
        let job = Uuid::new_v4();
        let size = 2 * CHUNK + 100;
        let data = vec![7u8; size as usize];
        let blob = seal_all(&key, job, &data, 4096);
        // A flipped bit in any chunk.
        for at in [
            HEADER as usize + 3,
            (HEADER + CHUNK + TAG) as usize + 5,
            blob.len() - 1,
        ] {
            let mut t = blob.clone();
            t[at] ^= 1;
            assert!(
                matches!(open_all(&key, job, size, &t), Err(OpenError::Tampered(_))),
                "{at}"
            );
        }
        // Two chunks swapped.
        let (a, la) = chunk_span(size, 0);
        let (b, _) = chunk_span(size, 1);
        let mut swapped = blob.clone();
        let first = blob[a as usize..(a + la) as usize].to_vec();
        let second = blob[b as usize..(b + la) as usize].to_vec();
        swapped[a as usize..(a + la) as usize].copy_from_slice(&second);
        swapped[b as usize..(b + la) as usize].copy_from_slice(&first);
        assert_eq!(
            open_all(&key, job, size, &swapped),
            Err(OpenError::Tampered(0))
        );
        // Truncated to whole chunks: the new last chunk was not sealed as last.
        let short = &blob[..(HEADER + 2 * (CHUNK + TAG)) as usize];
        assert!(open_all(&key, job, 2 * CHUNK, short).is_err());
        // Another job's blob, or another key.
        assert!(open_all(&key, Uuid::new_v4(), size, &blob).is_err());
        assert!(open_all(&new_data_key(), job, size, &blob).is_err());
        // Not sealed at all.
        assert_eq!(
            open_all(&key, job, size, &[0u8; 64]).err(),
            Some(OpenError::NotSealed)
        );
    }
}
