//! Constant storage: packed bytes held out of line, shared by reference count, optionally
//! memory-mapped from a file, so a 300 MB model is never copied.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Where a constant's bytes live.
#[derive(Clone)]
enum Storage {
    /// The vector itself (not copied into the `Arc`'s own allocation).
    Owned(Arc<Vec<u8>>),
    Mapped(Arc<memmap2::Mmap>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(b) => b,
            Storage::Mapped(m) => m,
        }
    }
}

/// A byte range of shared storage. Cloning shares the bytes.
#[derive(Clone)]
pub struct Blob {
    storage: Storage,
    start: usize,
    len: usize,
}

impl Blob {
    /// Takes ownership of bytes.
    pub fn from_vec(bytes: Vec<u8>) -> Blob {
        let len = bytes.len();
        Blob { storage: Storage::Owned(Arc::new(bytes)), start: 0, len }
    }

    /// Maps a whole file read-only.
    pub fn map_file(path: &Path) -> std::io::Result<Blob> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only; Tessera never writes the files it maps. A file truncated
        // by another process while mapped is outside what any mmap-based loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let len = map.len();
        Ok(Blob { storage: Storage::Mapped(Arc::new(map)), start: 0, len })
    }

    /// [`Blob::map_file`] with every page read in up front (`MAP_POPULATE` on Linux): for
    /// files read whole at once (an artifact, checksummed when opened), one batch of reads
    /// instead of a page fault per 4 KiB.
    pub fn map_file_populated(path: &Path) -> std::io::Result<Blob> {
        let file = std::fs::File::open(path)?;
        // SAFETY: as `map_file`.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
        let len = map.len();
        Ok(Blob { storage: Storage::Mapped(Arc::new(map)), start: 0, len })
    }

    /// A sub-range sharing the same storage, or None when it does not fit.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Blob> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| Blob { storage: self.storage.clone(), start: self.start + offset, len })
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }

    /// For bytes mapped from a file: drops the whole pages of this range from the process's
    /// resident set (`madvise(MADV_DONTNEED)`). The bytes stay readable and unchanged; a later
    /// read faults them back in from the file. For a target that has copied (packed) what it
    /// needs, so the model's weights are not counted twice. Returns the bytes released.
    pub fn release_resident_pages(&self) -> usize {
        #[cfg(unix)]
        if let Storage::Mapped(m) = &self.storage {
            const PAGE: usize = 4096;
            let (lo, hi) = (self.start.div_ceil(PAGE) * PAGE, (self.start + self.len) / PAGE * PAGE);
            if hi > lo {
                // SAFETY: the map is a read-only shared mapping of a file (`map_file`): after
                // MADV_DONTNEED its pages read back the same file contents, so borrowed slices
                // observe no change. The range lies inside the map.
                let r = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
                return if r.is_ok() { hi - lo } else { 0 };
            }
        }
        0
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage.bytes()[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes, hash {:016x})", self.len, fnv1a64(self))
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        **self == **other
    }
}

/// The data of a constant.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    /// Packed bytes in the layout `dtype.rs` describes.
    Bytes(Blob),
    /// Only a summary survived (a dump printed without its weights): the graph can be printed
    /// and verified, but not run.
    Summary { bytes: u64, hash: u64 },
}

impl ConstData {
    pub fn from_vec(bytes: Vec<u8>) -> ConstData {
        ConstData::Bytes(Blob::from_vec(bytes))
    }

    pub fn byte_len(&self) -> u64 {
        match self {
            ConstData::Bytes(b) => b.len() as u64,
            ConstData::Summary { bytes, .. } => *bytes,
        }
    }

    pub fn hash(&self) -> u64 {
        match self {
            ConstData::Bytes(b) => fnv1a64(b),
            ConstData::Summary { hash, .. } => *hash,
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            ConstData::Bytes(b) => Some(b),
            ConstData::Summary { .. } => None,
        }
    }

    /// See [`Blob::release_resident_pages`]; 0 for owned bytes and summaries.
    pub fn release_resident_pages(&self) -> usize {
        match self {
            ConstData::Bytes(b) => b.release_resident_pages(),
            ConstData::Summary { .. } => 0,
        }
    }
}

/// The content hash printed in dumps and checked for sidecar blobs (not a cryptographic
/// checksum): FNV-1a with 64-bit steps, over the bytes as little-endian 64-bit words, then each
/// remaining byte, then the length. Word steps make it fast enough to hash every weight of a
/// model on each dump.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h ^= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = h.wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h ^= b as u64;
        h = h.wrapping_mul(PRIME);
    }
    h ^= bytes.len() as u64;
    h.wrapping_mul(PRIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released pages read back the same bytes; only whole pages inside the range are released.
    #[test]
    fn released_pages_read_back_unchanged() {
        let path = std::env::temp_dir().join(format!("tessera-blob-{}.bin", std::process::id()));
        let data: Vec<u8> = (0..5 * 4096 + 100).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let blob = Blob::map_file(&path).unwrap();
        let part = blob.slice(100, 3 * 4096).unwrap();
        let before: Vec<u8> = part.to_vec();
        // [100, 100 + 3 pages) holds 2 whole pages.
        assert_eq!(part.release_resident_pages(), if cfg!(unix) { 2 * 4096 } else { 0 });
        assert_eq!(&part[..], &before[..]);
        assert_eq!(&blob[..], &data[..]);
        assert_eq!(Blob::from_vec(data.clone()).release_resident_pages(), 0);
        drop((blob, part));
        let _ = std::fs::remove_file(&path);
    }
}
