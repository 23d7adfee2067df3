//! Element types of Tessera tensors, their bit widths, and how sub-byte types are packed.
//!
//! Packing (the storage layout of constants and of raw tensor bytes):
//! - 8-bit and wider types are little-endian, row-major.
//! - `i4`/`u4`: two elements per byte, element `2k` in the low nibble (bits 0-3) and `2k+1` in
//!   the high nibble, as ONNX int4 and MatMulNBits store them. An odd count pads the last high nibble with 0.
//! - `ternary` (values -1, 0, +1): four elements per byte, element `4k` in bits 0-1; codes
//!   `0b00` = 0, `0b01` = +1, `0b11` = -1 (2-bit two's complement); `0b10` is invalid.
//! - `binary` (values -1, +1, as 1-bit weights use them): eight elements per byte, element `8k`
//!   in bit 0; a set bit is +1, a clear bit is -1.
//! - `bool`: one byte per element, 0 or 1.

use std::fmt;

/// An element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    I4,
    U4,
    /// 2-bit storage of the values -1, 0 and +1.
    Ternary,
    /// 1-bit storage of the values -1 and +1.
    Binary,
    Bool,
}

/// Which interpreter domain holds the values of a dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Held as f32 (f16 and bf16 values are rounded to their type after every op).
    Float,
    /// Held as i64, always inside the dtype's range.
    Int,
    Bool,
}

impl DType {
    /// Every dtype, in a fixed order (useful for tests and parsers).
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::I4,
        DType::U4,
        DType::Ternary,
        DType::Binary,
        DType::Bool,
    ];

    /// The name used in the text format (`f32`, `i4`, `ternary`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::Ternary => "ternary",
            DType::Binary => "binary",
            DType::Bool => "bool",
        }
    }

    /// Parses a text-format name.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Storage bits per element.
    pub fn bits(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 32,
            DType::F16 | DType::BF16 | DType::I16 => 16,
            DType::I64 => 64,
            DType::I8 | DType::U8 | DType::Bool => 8,
            DType::I4 | DType::U4 => 4,
            DType::Ternary => 2,
            DType::Binary => 1,
        }
    }

    /// Bytes needed to store `n_elements` packed.
    pub fn storage_bytes(self, n_elements: usize) -> usize {
        (n_elements * self.bits()).div_ceil(8)
    }

    pub fn domain(self) -> Domain {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => Domain::Float,
            DType::Bool => Domain::Bool,
            _ => Domain::Int,
        }
    }

    pub fn is_float(self) -> bool {
        self.domain() == Domain::Float
    }

    pub fn is_int(self) -> bool {
        self.domain() == Domain::Int
    }

    /// Whether several elements share a byte.
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }

    /// The inclusive value range of an integer dtype (None for floats and bool).
    pub fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            DType::I64 => (i64::MIN, i64::MAX),
            DType::I32 => (i32::MIN as i64, i32::MAX as i64),
            DType::I16 => (i16::MIN as i64, i16::MAX as i64),
            DType::I8 => (-128, 127),
            DType::U8 => (0, 255),
            DType::I4 => (-8, 7),
            DType::U4 => (0, 15),
            DType::Ternary => (-1, 1),
            DType::Binary => (-1, 1),
            _ => return None,
        })
    }

    /// Wraps an integer into this dtype as two's complement truncation does (C and numpy casts).
    /// Ternary saturates to -1..=1; binary maps negative values to -1 and the rest to +1.
    pub fn wrap_int(self, v: i64) -> i64 {
        match self {
            DType::I64 => v,
            DType::I32 => v as i32 as i64,
            DType::I16 => v as i16 as i64,
            DType::I8 => v as i8 as i64,
            DType::U8 => v as u8 as i64,
            DType::I4 => (v << 60) >> 60,
            DType::U4 => v & 0xF,
            DType::Ternary => v.clamp(-1, 1),
            DType::Binary => {
                if v < 0 {
                    -1
                } else {
                    1
                }
            }
            _ => v,
        }
    }

    /// Saturates an integer into this dtype's range (quantization uses this).
    pub fn saturate_int(self, v: i64) -> i64 {
        match self.int_range() {
            Some((lo, hi)) => {
                if self == DType::Binary {
                    self.wrap_int(v)
                } else {
                    v.clamp(lo, hi)
                }
            }
            None => v,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("f64"), None);
    }

    #[test]
    fn storage_bytes_pack_sub_byte_types() {
        assert_eq!(DType::I4.storage_bytes(5), 3);
        assert_eq!(DType::Ternary.storage_bytes(5), 2);
        assert_eq!(DType::Binary.storage_bytes(9), 2);
        assert_eq!(DType::F16.storage_bytes(3), 6);
    }

    #[test]
    fn wrap_and_saturate() {
        assert_eq!(DType::I4.wrap_int(9), -7);
        assert_eq!(DType::I4.saturate_int(9), 7);
        assert_eq!(DType::U8.wrap_int(-1), 255);
        assert_eq!(DType::I8.saturate_int(-300), -128);
        assert_eq!(DType::Binary.saturate_int(0), 1);
    }
}
