//! GGUF (v2, v3) reader: the header, the metadata key-value table, the tensor table and the
//! memory-mapped tensor data, checked before anything is trusted.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! each metadata entry a string key, a u32 value type and the value (strings are a u64 length
//! and UTF-8 bytes; arrays a u32 element type, a u64 count and the elements); each tensor a
//! name, a u32 dim count, u64 dims (innermost first), a u32 ggml type and a u64 offset from the
//! start of the data section, which begins at the next multiple of `general.alignment` (32 by
//! default) after the tensor table.
//!
//! Every count is checked against the bytes left before anything is allocated, every tensor's
//! extent against the file, and every tensor's size against its type's block layout: a
//! truncated or malicious file gives a [`GgufError`] naming the place, never a panic or a giant
//! allocation. Lowering a model into the IR is the next step (issue 9); this reader is what it
//! stands on.

use std::fmt;
use std::path::Path;

use tessera_ir::{Blob, DType};

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("not a GGUF file: the magic is {found:?}, not \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("truncated at byte {at}: {what} needs {need} bytes, {left} are left")]
    Truncated { at: u64, what: String, need: u64, left: u64 },
    #[error("at byte {at}: {what} is {count}, more than the {left} bytes left could hold")]
    TooMany { at: u64, what: String, count: u64, left: u64 },
    #[error("at byte {at}: metadata {key:?} has value type {ty}, which GGUF does not define")]
    BadValueType { at: u64, key: String, ty: u32 },
    #[error("at byte {at}: {what} is not UTF-8")]
    Utf8 { at: u64, what: String },
    #[error("tensor {name:?}: ggml type {ty} ({kind}) is not supported by Tessera")]
    UnsupportedType { name: String, ty: u32, kind: &'static str },
    #[error("tensor {name:?}: {message}")]
    BadTensor { name: String, message: String },
    #[error("tensor {name:?} spans bytes {start}..{end} but the file has {file} bytes")]
    OutOfFile { name: String, start: u64, end: u64, file: u64 },
    #[error("metadata {key:?}: {message}")]
    BadMetadata { key: String, message: String },
}

/// A ggml tensor type: how elements are packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    TQ1_0,
    TQ2_0,
}

impl GgmlType {
    /// The type with ggml id `id`, or the name of an id Tessera does not read.
    pub fn from_id(id: u32) -> Result<GgmlType, &'static str> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            4 | 5 => return Err("Q4_2/Q4_3, removed from ggml"),
            16..=23 | 29 => return Err("an IQ (importance-matrix) format"),
            39 => return Err("MXFP4"),
            _ => return Err("unknown to this reader"),
        })
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            F64 => "F64",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
        }
    }

    /// (elements per block, bytes per block), as ggml lays them out.
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            F64 | I64 => (1, 8),
            I8 => (1, 1),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// An integer value of any width, if it is one and fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for MetaValue {
    /// Scalars as they are; strings quoted; arrays as their length and first elements.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) if s.chars().count() > 60 => {
                write!(f, "{:?}...", s.chars().take(60).collect::<String>())
            }
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::Array(a) => {
                write!(f, "[{} values", a.len())?;
                for (i, v) in a.iter().take(3).enumerate() {
                    write!(f, "{}{v}", if i == 0 { ": " } else { ", " })?;
                }
                write!(f, "{}]", if a.len() > 3 { ", ..." } else { "" })
            }
        }
    }
}

/// One tensor of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dims as the file lists them: innermost (contiguous) first.
    pub ggml_dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorInfo {
    /// Row-major shape (outermost first), as the IR writes shapes.
    pub fn shape(&self) -> Vec<u64> {
        self.ggml_dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> u64 {
        self.ggml_dims.iter().product()
    }
}

/// A read GGUF file; tensor bytes stay in the mapping.
pub struct Gguf {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section begins.
    pub data_offset: u64,
    /// Where the metadata ends (the tensor table begins).
    metadata_end: usize,
    data: Blob,
}

impl Gguf {
    /// Maps and reads a file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let data = Blob::map_file(path)
            .map_err(|e| GgufError::Io { path: path.display().to_string(), message: e.to_string() })?;
        Gguf::parse(data)
    }

    /// Reads a GGUF image held in `data`.
    pub fn parse(data: Blob) -> Result<Gguf, GgufError> {
        let mut r = Reader { b: &data[..], at: 0 };
        let magic = r.take(4, "the magic")?;
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: [magic[0], magic[1], magic[2], magic[3]] });
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_meta = r.u64("the metadata count")?;
        // Each metadata entry takes at least 12 bytes (key length, type), each tensor 24.
        r.fits(n_meta, 12, "the metadata count")?;
        let mut metadata = Vec::with_capacity(n_meta as usize);
        for _ in 0..n_meta {
            let key = r.string("a metadata key")?;
            let at = r.at as u64;
            let ty = r.u32(&format!("the type of {key:?}"))?;
            let v = r.value(ty, &key, at, 0)?;
            metadata.push((key, v));
        }
        let metadata_end = r.at;
        r.fits(n_tensors, 24, "the tensor count")?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&format!("the dim count of {name:?}"))?;
            if n_dims > 8 {
                return Err(GgufError::BadTensor { name, message: format!("{n_dims} dims (at most 8)") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for i in 0..n_dims {
                dims.push(r.u64(&format!("dim {i} of {name:?}"))?);
            }
            let ty = r.u32(&format!("the type of {name:?}"))?;
            let offset = r.u64(&format!("the offset of {name:?}"))?;
            infos.push((name, dims, ty, offset));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => 32,
            Some((k, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        key: k.clone(),
                        message: format!("{v} is not a power of two"),
                    })
                }
            },
        };
        let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
        let file = r.b.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty, offset) in infos {
            let ty =
                GgmlType::from_id(ty).map_err(|kind| GgufError::UnsupportedType { name: name.clone(), ty, kind })?;
            let bad = |message: String| GgufError::BadTensor { name: name.clone(), message };
            let elements =
                dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("too many elements".into()))?;
            let (per_block, block_bytes) = ty.block();
            let inner = dims.first().copied().unwrap_or(1);
            if inner % per_block != 0 {
                return Err(bad(format!(
                    "its innermost dim {inner} is not a multiple of {ty}'s {per_block}-element blocks"
                )));
            }
            let bytes = (elements / per_block).checked_mul(block_bytes).ok_or_else(|| bad("too many bytes".into()))?;
            if offset % alignment != 0 {
                return Err(bad(format!("its offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let start = data_offset.checked_add(offset).ok_or_else(|| bad("offset overflows".into()))?;
            let end = start.checked_add(bytes).ok_or_else(|| bad("extent overflows".into()))?;
            if end > file {
                return Err(GgufError::OutOfFile { name, start, end, file });
            }
            tensors.push(TensorInfo { name, ggml_dims: dims, ty, offset: start, bytes });
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_offset, metadata_end, data })
    }

    /// The file's header and metadata with no tensors: a GGUF image a tokenizer (and
    /// anything else reading metadata only) can be made from, as artifacts store it.
    pub fn metadata_only(&self) -> Vec<u8> {
        let mut out = self.data[..self.metadata_end].to_vec();
        out[8..16].copy_from_slice(&0u64.to_le_bytes());
        out
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// An integer of the architecture's own keys (`{arch}.block_count`, ...).
    pub fn arch_u64(&self, key: &str) -> Result<u64, GgufError> {
        let arch = self.architecture().unwrap_or("?");
        let full = format!("{arch}.{key}");
        self.get(&full)
            .and_then(|v| v.as_u64())
            .ok_or(GgufError::BadMetadata { key: full, message: "missing, or not an unsigned integer".into() })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes (in the mapping, checked against the file when read).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.data[t.offset as usize..(t.offset + t.bytes) as usize]
    }

    /// The whole file's size.
    pub fn file_bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// A quantized tensor taken apart: one small integer code per element and, per block of
/// `block` consecutive elements, a scale and (for the formats with a float minimum) an offset.
/// Element `e` is `codes[e] as f32 * scale[e / block] (+ offset[e / block])`: the same products
/// and sums, in the same order, as ggml's reference dequantization, so bit-identical to it.
/// Zero points are folded into the codes (Q4_0 stores `q - 8`), so every code fits `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct Codes {
    /// The narrowest IR type holding every code of the format: i4, u4, i8 or ternary.
    pub dtype: DType,
    pub codes: Vec<i8>,
    pub block: usize,
    pub scale: Vec<f32>,
    pub offset: Option<Vec<f32>>,
}

impl Codes {
    /// Element `e` as f32.
    pub fn value(&self, e: usize) -> f32 {
        let b = e / self.block;
        let v = self.codes[e] as f32 * self.scale[b];
        match &self.offset {
            Some(o) => v + o[b],
            None => v,
        }
    }
}

/// Takes a quantized tensor apart (see [`Codes`]); `bytes` holds whole blocks. An error for
/// the float and integer types (they have no codes) and for formats not read yet.
pub fn decode(ty: GgmlType, bytes: &[u8]) -> Result<Codes, String> {
    let (per_block, block_bytes) = ty.block();
    if !(bytes.len() as u64).is_multiple_of(block_bytes) {
        return Err(format!("{} bytes are not a whole number of {ty} blocks", bytes.len()));
    }
    let blocks = bytes.chunks_exact(block_bytes as usize);
    let n = blocks.len() * per_block as usize;
    let mut codes: Vec<i8> = Vec::with_capacity(n);
    let mut scale: Vec<f32> = Vec::new();
    let mut offset: Vec<f32> = Vec::new();
    use GgmlType::*;
    let (dtype, block) = match ty {
        // d: f16, then 32 signed bytes: q * d.
        Q8_0 => {
            for b in blocks {
                scale.push(f16(b));
                codes.extend(b[2..34].iter().map(|&q| q as i8));
            }
            (DType::I8, 32)
        }
        // d: f16, 16 bytes of nibbles: (q - 8) * d.
        Q4_0 => {
            for b in blocks {
                scale.push(f16(b));
                codes.extend(nibbles(&b[2..18]).map(|q| q as i8 - 8));
            }
            (DType::I4, 32)
        }
        // d, m: f16, nibbles: d * q + m.
        Q4_1 => {
            for b in blocks {
                scale.push(f16(&b[0..2]));
                offset.push(f16(&b[2..4]));
                codes.extend(nibbles(&b[4..20]).map(|q| q as i8));
            }
            (DType::U4, 32)
        }
        // d: f16, qh: u32 of fifth bits, nibbles: (q - 16) * d.
        Q5_0 => {
            for b in blocks {
                scale.push(f16(b));
                codes.extend(five_bits(&b[2..6], &b[6..22]).map(|q| q as i8 - 16));
            }
            (DType::I8, 32)
        }
        // d, m: f16, qh, nibbles: d * q + m.
        Q5_1 => {
            for b in blocks {
                scale.push(f16(&b[0..2]));
                offset.push(f16(&b[2..4]));
                codes.extend(five_bits(&b[4..8], &b[8..24]).map(|q| q as i8));
            }
            (DType::I8, 32)
        }
        // Super-blocks of 256: 16 bytes of 4-bit scale and min pairs (one per 16 elements), 64
        // bytes of 2-bit values, d, dmin: d * scale * q - dmin * min.
        Q2_K => {
            for b in blocks {
                let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], f16(&b[80..82]), f16(&b[82..84]));
                for &sc in scales {
                    scale.push(d * (sc & 0x0F) as f32);
                    offset.push(-(dmin * (sc >> 4) as f32));
                }
                codes.extend((0..256).map(|e| crumb(qs, e) as i8));
            }
            (DType::U4, 16)
        }
        // Super-blocks of 256: d, dmin (f16), 12 bytes of 6-bit scales and mins for eight
        // sub-blocks of 32, (Q5_K: 32 bytes of fifth bits), 128 bytes of nibbles.
        Q4_K => {
            for b in blocks {
                k_quant(&b[0..16], None, &b[16..144], &mut codes, &mut scale, &mut offset);
            }
            (DType::U4, 32)
        }
        Q5_K => {
            for b in blocks {
                k_quant(&b[0..16], Some(&b[16..48]), &b[48..176], &mut codes, &mut scale, &mut offset);
            }
            (DType::I8, 32)
        }
        // Super-blocks of 256: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed
        // scales (one per 16 elements), d (f16). Element: d * scale * (q - 32).
        Q6_K => {
            for b in blocks {
                let (ql, qh, scales, d) = (&b[0..128], &b[128..192], &b[192..208], f16(&b[208..210]));
                scale.extend(scales.iter().map(|&s| d * s as i8 as f32));
                let start = codes.len();
                codes.resize(start + 256, 0);
                for half_ in 0..2 {
                    let (ql, qh) = (&ql[64 * half_..64 * half_ + 64], &qh[32 * half_..32 * half_ + 32]);
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (k, &q) in q.iter().enumerate() {
                            codes[start + 128 * half_ + l + 32 * k] = q as i8 - 32;
                        }
                    }
                }
            }
            (DType::I8, 16)
        }
        // Ternary, 256 per block: 48 bytes each packing five base-3 digits (32 bytes for
        // elements 0-159, 16 for 160-239), 4 bytes packing four (240-255), d. Digit `m` of a
        // byte is read as ((byte * 3^m mod 256) * 3) >> 8, minus 1.
        TQ1_0 => {
            for b in blocks {
                let (qs, qh) = (&b[0..48], &b[48..52]);
                scale.push(f16(&b[52..54]));
                let trit = |byte: u8, m: usize| -> i8 {
                    let v = byte.wrapping_mul(3u8.pow(m as u32)) as u16;
                    ((v * 3) >> 8) as i8 - 1
                };
                // (bytes, digits per byte): element m * bytes.len() + j is digit m of byte j.
                for (bytes, digits) in [(&qs[0..32], 5), (&qs[32..48], 5), (qh, 4)] {
                    for m in 0..digits {
                        codes.extend(bytes.iter().map(|&q| trit(q, m)));
                    }
                }
            }
            (DType::Ternary, 256)
        }
        // Ternary, 256 per block: 64 bytes of 2-bit values minus 1, then d.
        TQ2_0 => {
            for b in blocks {
                scale.push(f16(&b[64..66]));
                codes.extend((0..256).map(|e| crumb(&b[0..64], e) as i8 - 1));
            }
            (DType::Ternary, 256)
        }
        _ => return Err(format!("{ty} has no quantization codes Tessera reads")),
    };
    let offset = (!offset.is_empty()).then_some(offset);
    Ok(Codes { dtype, codes, block, scale, offset })
}

/// A tensor's elements as f32, in row-major order, exactly as ggml dequantizes them (the same
/// products in the same order, so the values are bit-identical to llama.cpp's reference
/// dequantization). `bytes` holds the whole tensor.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let (_, unit) = ty.block();
    if !(bytes.len() as u64).is_multiple_of(unit) {
        return Err(format!("{} bytes are not a whole number of {ty} blocks", bytes.len()));
    }
    let units = bytes.chunks_exact(unit as usize);
    Ok(match ty {
        GgmlType::F32 => units.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => units.map(f16).collect(),
        GgmlType::BF16 => units.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => {
            let c = decode(ty, bytes)?;
            (0..c.codes.len()).map(|e| c.value(e)).collect()
        }
    })
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// 32 four-bit values: element j in the low nibble of byte j, element j + 16 in its high.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|&q| q & 0x0F).chain(qs.iter().map(|&q| q >> 4))
}

/// 32 five-bit values: nibbles as [`nibbles`], bit j of the little-endian u32 `qh` the fifth bit
/// of element j.
fn five_bits<'a>(qh: &[u8], qs: &'a [u8]) -> impl Iterator<Item = u8> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    nibbles(qs).enumerate().map(move |(e, q)| q | (((qh >> e) & 1) as u8) << 4)
}

/// Element `e` of 256 two-bit values in 64 bytes: each 32-byte chunk holds four shifts of 32.
fn crumb(qs: &[u8], e: usize) -> u8 {
    let (chunk, s, j) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * chunk + j] >> (2 * s)) & 3
}

/// A Q4_K/Q5_K super-block: `head` is d, dmin and the 12 scale bytes; sub-block `sub`'s
/// element j is `d * scale * q - dmin * min`, q the nibble of `qs` (two sub-blocks per 32-byte
/// chunk, low then high) plus, for Q5_K, bit `sub` of `qh[j]` as the fifth bit.
fn k_quant(
    head: &[u8],
    qh: Option<&[u8]>,
    qs: &[u8],
    codes: &mut Vec<i8>,
    scale: &mut Vec<f32>,
    offset: &mut Vec<f32>,
) {
    let (d, dmin, sc) = (f16(&head[0..2]), f16(&head[2..4]), &head[4..16]);
    for sub in 0..8 {
        let (s, m) = k_scale_min(sc, sub);
        scale.push(d * s as f32);
        offset.push(-(dmin * m as f32));
        let chunk = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
        let shift = 4 * (sub % 2);
        codes.extend(chunk.iter().enumerate().map(|(j, &q)| {
            let hi = qh.map_or(0, |qh| ((qh[j] >> sub) & 1) << 4);
            (((q >> shift) & 0x0F) | hi) as i8
        }));
    }
}

/// Sub-block `j`'s 6-bit scale and min from a K-quant's 12 scale bytes: sub-blocks 0-3 in the
/// low six bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 split between the low and high
/// nibbles of bytes 8-11 and the top two bits of bytes 0-7.
fn k_scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        ((sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.at) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated { at: self.at as u64, what: what.into(), need: n, left: self.left() });
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    /// Rejects a count of items of at least `min` bytes each that the rest cannot hold.
    fn fits(&self, count: u64, min: u64, what: &str) -> Result<(), GgufError> {
        if count.saturating_mul(min) > self.left() {
            return Err(GgufError::TooMany { at: self.at as u64, what: what.into(), count, left: self.left() });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let at = self.at as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Utf8 { at, what: what.into() })
    }

    /// A value of type `ty` for `key`; arrays nest at most a few levels.
    fn value(&mut self, ty: u32, key: &str, at: u64, depth: u32) -> Result<MetaValue, GgufError> {
        let what = format!("the value of {key:?}");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(GgufError::BadMetadata { key: key.into(), message: format!("bool byte {b}") });
                }
            },
            8 => MetaValue::String(self.string(&what)?),
            9 if depth < 4 => {
                let ety_at = self.at as u64;
                let ety = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every element takes at least one byte (strings eight).
                self.fits(count, if ety == 8 { 8 } else { 1 }, &format!("the length of {key:?}"))?;
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.value(ety, key, ety_at, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => return Err(GgufError::BadValueType { at, key: key.into(), ty }),
        })
    }
}
