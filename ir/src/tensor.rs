//! Runtime tensors of the reference interpreter, and their packed byte form.
//!
//! Values live in one of three domains (see `DType::domain`): floats as f32 (f16 and bf16 are
//! rounded to their type whenever a tensor is made), integers as i64 kept inside their dtype's
//! range, and bools.

use crate::dtype::{DType, Domain};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::fmt;

/// Why a tensor could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes, got {actual}")]
    ByteLength { dtype: DType, shape: Vec<usize>, expected: usize, actual: usize },
    #[error("shape {shape:?} holds {expected} elements, got {actual}")]
    ElementCount { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("value {value} at element {index} is outside the range of {dtype}")]
    OutOfRange { dtype: DType, index: usize, value: i64 },
    #[error("invalid ternary code 0b10 at element {index}")]
    InvalidTernary { index: usize },
    #[error("{dtype} values cannot be given as {given}")]
    WrongDomain { dtype: DType, given: &'static str },
    #[error("shape {shape:?} has too many elements")]
    TooLarge { shape: Vec<usize> },
}

/// The values of a tensor, in its domain.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Float(ArrayD<f32>),
    Int(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// A dense tensor with a dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: DType,
    data: TensorData,
}

/// Rounds an f32 to the precision of a float dtype.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Element count of a shape, refusing overflow.
/// Also refuses shapes whose non-zero dims multiply past `isize::MAX` (ndarray cannot hold them
/// even when a zero dim makes the count 0).
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    let too_large = || TensorError::TooLarge { shape: shape.to_vec() };
    let non_zero =
        shape.iter().filter(|&&d| d != 0).try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_large)?;
    if non_zero > isize::MAX as usize {
        return Err(too_large());
    }
    Ok(if shape.contains(&0) { 0 } else { non_zero })
}

impl Tensor {
    /// Makes a float tensor; values are rounded to `dtype`.
    pub fn from_f32(dtype: DType, shape: &[usize], mut values: Vec<f32>) -> Result<Tensor, TensorError> {
        if dtype.domain() != Domain::Float {
            return Err(TensorError::WrongDomain { dtype, given: "floats" });
        }
        check_count(shape, values.len())?;
        if dtype != DType::F32 {
            values.iter_mut().for_each(|v| *v = round_to(dtype, *v));
        }
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).expect("count checked");
        Ok(Tensor { dtype, data: TensorData::Float(array) })
    }

    /// Makes an integer tensor; every value must be inside the dtype's range.
    pub fn from_i64(dtype: DType, shape: &[usize], values: Vec<i64>) -> Result<Tensor, TensorError> {
        let Some((lo, hi)) = dtype.int_range() else {
            return Err(TensorError::WrongDomain { dtype, given: "integers" });
        };
        check_count(shape, values.len())?;
        for (index, &value) in values.iter().enumerate() {
            let bad_binary = dtype == DType::Binary && value == 0;
            if value < lo || value > hi || bad_binary {
                return Err(TensorError::OutOfRange { dtype, index, value });
            }
        }
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).expect("count checked");
        Ok(Tensor { dtype, data: TensorData::Int(array) })
    }

    pub fn from_bool(shape: &[usize], values: Vec<bool>) -> Result<Tensor, TensorError> {
        check_count(shape, values.len())?;
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).expect("count checked");
        Ok(Tensor { dtype: DType::Bool, data: TensorData::Bool(array) })
    }

    /// Wraps an array that already holds valid values of `dtype` (the interpreter's fast path).
    pub fn from_data(dtype: DType, data: TensorData) -> Tensor {
        debug_assert!(matches!(
            (dtype.domain(), &data),
            (Domain::Float, TensorData::Float(_))
                | (Domain::Int, TensorData::Int(_))
                | (Domain::Bool, TensorData::Bool(_))
        ));
        Tensor { dtype, data }
    }

    /// A tensor of zeros (false for bool, +1 for binary, which has no zero).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor, TensorError> {
        let n = checked_numel(shape)?;
        match dtype.domain() {
            Domain::Float => Tensor::from_f32(dtype, shape, vec![0.0; n]),
            Domain::Int => Tensor::from_i64(dtype, shape, vec![if dtype == DType::Binary { 1 } else { 0 }; n]),
            Domain::Bool => Tensor::from_bool(shape, vec![false; n]),
        }
    }

    /// Unpacks bytes in the layout `dtype.rs` documents.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, TensorError> {
        let n = checked_numel(shape)?;
        let expected = n
            .checked_mul(dtype.bits())
            .map(|b| b.div_ceil(8))
            .ok_or_else(|| TensorError::TooLarge { shape: shape.to_vec() })?;
        if bytes.len() != expected {
            return Err(TensorError::ByteLength { dtype, shape: shape.to_vec(), expected, actual: bytes.len() });
        }
        fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
            bytes.chunks_exact(N).map(|c| c.try_into().expect("exact chunk"))
        }
        match dtype {
            DType::F32 => Tensor::from_f32(dtype, shape, chunks::<4>(bytes).map(f32::from_le_bytes).collect()),
            DType::F16 => {
                Tensor::from_f32(dtype, shape, chunks::<2>(bytes).map(|b| f16::from_le_bytes(b).to_f32()).collect())
            }
            DType::BF16 => {
                Tensor::from_f32(dtype, shape, chunks::<2>(bytes).map(|b| bf16::from_le_bytes(b).to_f32()).collect())
            }
            DType::I64 => Tensor::from_i64(dtype, shape, chunks::<8>(bytes).map(i64::from_le_bytes).collect()),
            DType::I32 => {
                Tensor::from_i64(dtype, shape, chunks::<4>(bytes).map(|b| i32::from_le_bytes(b) as i64).collect())
            }
            DType::I16 => {
                Tensor::from_i64(dtype, shape, chunks::<2>(bytes).map(|b| i16::from_le_bytes(b) as i64).collect())
            }
            DType::I8 => Tensor::from_i64(dtype, shape, bytes.iter().map(|&b| b as i8 as i64).collect()),
            DType::U8 => Tensor::from_i64(dtype, shape, bytes.iter().map(|&b| b as i64).collect()),
            DType::Bool => Tensor::from_bool(shape, bytes.iter().map(|&b| b != 0).collect()),
            DType::I4 | DType::U4 | DType::Ternary | DType::Binary => {
                let bits = dtype.bits();
                let per_byte = 8 / bits;
                let mask = (1u8 << bits) - 1;
                let mut values = Vec::with_capacity(n);
                for index in 0..n {
                    let code = (bytes[index / per_byte] >> ((index % per_byte) * bits)) & mask;
                    values.push(match dtype {
                        DType::I4 => ((code << 4) as i8 >> 4) as i64,
                        DType::U4 => code as i64,
                        DType::Ternary => match code {
                            0 => 0,
                            1 => 1,
                            3 => -1,
                            _ => return Err(TensorError::InvalidTernary { index }),
                        },
                        _ => {
                            if code == 1 {
                                1
                            } else {
                                -1
                            }
                        }
                    });
                }
                Tensor::from_i64(dtype, shape, values)
            }
        }
    }

    /// Packs the values into bytes (the inverse of `from_bytes`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.dtype.storage_bytes(self.numel()));
        match &self.data {
            TensorData::Float(a) if matches!(self.dtype, DType::F32) && a.as_slice().is_some() => {
                // Contiguous f32: a fixed-width copy the compiler vectorizes.
                let s = a.as_slice().unwrap_or_default();
                out.resize(s.len() * 4, 0);
                for (o, v) in out.chunks_exact_mut(4).zip(s) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            TensorData::Int(a) if matches!(self.dtype.bits(), 8 | 16 | 32 | 64) && a.as_slice().is_some() => {
                let s = a.as_slice().unwrap_or_default();
                let w = self.dtype.bits() / 8;
                out.resize(s.len() * w, 0);
                match w {
                    1 => out.iter_mut().zip(s).for_each(|(o, &v)| *o = v as u8),
                    2 => {
                        out.chunks_exact_mut(2).zip(s).for_each(|(o, &v)| o.copy_from_slice(&(v as u16).to_le_bytes()))
                    }
                    4 => {
                        out.chunks_exact_mut(4).zip(s).for_each(|(o, &v)| o.copy_from_slice(&(v as u32).to_le_bytes()))
                    }
                    _ => out.chunks_exact_mut(8).zip(s).for_each(|(o, &v)| o.copy_from_slice(&v.to_le_bytes())),
                }
            }
            TensorData::Float(a) => {
                for &v in a.iter() {
                    match self.dtype {
                        DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                        DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                        _ => out.extend_from_slice(&v.to_le_bytes()),
                    }
                }
            }
            TensorData::Bool(a) => out.extend(a.iter().map(|&b| b as u8)),
            TensorData::Int(a) => {
                let bits = self.dtype.bits();
                if bits >= 8 {
                    for &v in a.iter() {
                        out.extend_from_slice(&v.to_le_bytes()[..bits / 8]);
                    }
                } else {
                    let per_byte = 8 / bits;
                    let mask = (1u8 << bits) - 1;
                    out.resize(self.dtype.storage_bytes(a.len()), 0);
                    for (index, &v) in a.iter().enumerate() {
                        let code = match self.dtype {
                            DType::Binary => (v > 0) as u8,
                            _ => (v as u8) & mask,
                        };
                        out[index / per_byte] |= code << ((index % per_byte) * bits);
                    }
                }
            }
        }
        out
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        match &self.data {
            TensorData::Float(a) => a.shape(),
            TensorData::Int(a) => a.shape(),
            TensorData::Bool(a) => a.shape(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The values of a float tensor as one row-major `Vec` (its own storage when the array is
    /// in standard layout, so a vector moved in with [`Tensor::from_f32`] comes back with its
    /// allocation and capacity); the tensor back when it is not a float tensor.
    pub fn into_f32_vec(self) -> Result<Vec<f32>, Box<Tensor>> {
        match self.data {
            TensorData::Float(a) if a.is_standard_layout() => {
                let n = a.len();
                let (mut v, offset) = a.into_raw_vec_and_offset();
                // Both are no-ops (no copy) for a vector moved in whole.
                v.drain(..offset.unwrap_or(0));
                v.truncate(n);
                Ok(v)
            }
            TensorData::Float(a) => Ok(a.iter().copied().collect()),
            data => Err(Box::new(Tensor { dtype: self.dtype, data })),
        }
    }

    pub fn as_float(&self) -> Option<&ArrayD<f32>> {
        match &self.data {
            TensorData::Float(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<&ArrayD<i64>> {
        match &self.data {
            TensorData::Int(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<&ArrayD<bool>> {
        match &self.data {
            TensorData::Bool(a) => Some(a),
            _ => None,
        }
    }

    /// Every element as f64, row-major (for comparisons and printing).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::Float(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::Int(a) => a.iter().map(|&v| v as f64).collect(),
            TensorData::Bool(a) => a.iter().map(|&v| v as u8 as f64).collect(),
        }
    }

    /// Writes the elements as text-format literals, row-major, separated by ", ".
    pub fn write_elements(&self, out: &mut String) {
        use std::fmt::Write;
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !first {
                out.push_str(", ");
            }
            first = false;
        };
        match &self.data {
            TensorData::Float(a) => a.iter().for_each(|v| {
                sep(out);
                write_f32(out, *v);
            }),
            TensorData::Int(a) => a.iter().for_each(|v| {
                sep(out);
                let _ = write!(out, "{v}");
            }),
            TensorData::Bool(a) => a.iter().for_each(|v| {
                sep(out);
                let _ = write!(out, "{v}");
            }),
        }
    }
}

/// Writes an f32 so that it parses back to the same bits (`nan`, `inf`, `-inf` for specials).
pub fn write_f32(out: &mut String, v: f32) {
    use std::fmt::Write;
    if v.is_nan() {
        out.push_str("nan");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "inf" } else { "-inf" });
    } else {
        let _ = write!(out, "{v:?}");
    }
}

fn check_count(shape: &[usize], actual: usize) -> Result<(), TensorError> {
    let expected = checked_numel(shape)?;
    if expected != actual {
        return Err(TensorError::ElementCount { shape: shape.to_vec(), expected, actual });
    }
    Ok(())
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_packing_round_trips() {
        let t = Tensor::from_i64(DType::I4, &[5], vec![-8, 7, 0, -1, 3]).unwrap();
        let bytes = t.to_bytes();
        assert_eq!(bytes, vec![0x78, 0xF0, 0x03]);
        assert_eq!(Tensor::from_bytes(DType::I4, &[5], &bytes).unwrap(), t);

        let t = Tensor::from_i64(DType::Ternary, &[5], vec![-1, 0, 1, 1, -1]).unwrap();
        let bytes = t.to_bytes();
        assert_eq!(bytes, vec![0b0101_0011, 0b11]);
        assert_eq!(Tensor::from_bytes(DType::Ternary, &[5], &bytes).unwrap(), t);

        let t = Tensor::from_i64(DType::Binary, &[9], vec![1, -1, 1, 1, -1, -1, -1, 1, 1]).unwrap();
        let bytes = t.to_bytes();
        assert_eq!(bytes, vec![0b1000_1101, 1]);
        assert_eq!(Tensor::from_bytes(DType::Binary, &[9], &bytes).unwrap(), t);
    }

    #[test]
    fn an_f32_vector_moves_in_and_out_with_its_allocation() {
        let mut v = Vec::with_capacity(100);
        v.extend([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ptr = v.as_ptr();
        let t = Tensor::from_f32(DType::F32, &[2, 3], v).unwrap();
        let back = t.into_f32_vec().unwrap();
        assert_eq!((back.as_ptr(), back.capacity()), (ptr, 100));
        assert_eq!(back, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // A view that is not the whole storage comes back as its own values.
        let t = Tensor::from_f32(DType::F32, &[2, 3], back).unwrap();
        let TensorData::Float(a) = t.into_data() else { unreachable!() };
        let col = a.slice_move(ndarray::s![.., 1..]).into_dyn();
        let t = Tensor::from_data(DType::F32, TensorData::Float(col));
        assert_eq!(t.into_f32_vec().unwrap(), [2.0, 3.0, 5.0, 6.0]);
        let ints = Tensor::from_i64(DType::I64, &[1], vec![7]).unwrap();
        assert_eq!(*ints.clone().into_f32_vec().unwrap_err(), ints);
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        assert!(matches!(Tensor::from_bytes(DType::F32, &[2], &[0; 7]), Err(TensorError::ByteLength { .. })));
        assert!(matches!(
            Tensor::from_bytes(DType::Ternary, &[1], &[0b10]),
            Err(TensorError::InvalidTernary { index: 0 })
        ));
        assert!(matches!(Tensor::from_i64(DType::I4, &[1], vec![8]), Err(TensorError::OutOfRange { .. })));
        assert!(matches!(Tensor::from_bytes(DType::F32, &[usize::MAX, 4], &[]), Err(TensorError::TooLarge { .. })));
        assert!(matches!(Tensor::from_f32(DType::F32, &[0, usize::MAX], vec![]), Err(TensorError::TooLarge { .. })));
        assert!(Tensor::from_f32(DType::F32, &[0, 3], vec![]).is_ok());
    }

    #[test]
    fn half_types_round_on_creation() {
        let t = Tensor::from_f32(DType::F16, &[1], vec![0.1]).unwrap();
        assert_eq!(t.as_float().unwrap()[[0]], f16::from_f32(0.1).to_f32());
    }
}
