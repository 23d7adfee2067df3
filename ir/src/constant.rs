//! Constant storage: packed bytes held out of line, shared by reference count, optionally
//! memory-mapped from a file, so a 300 MB model is never copied.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Where a constant's bytes live.
#[derive(Clone)]
enum Storage {
    Owned(Arc<[u8]>),
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
        Blob { storage: Storage::Owned(Arc::from(bytes)), start: 0, len }
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

    /// A sub-range sharing the same storage, or None when it does not fit.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Blob> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| Blob { storage: self.storage.clone(), start: self.start + offset, len })
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
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
